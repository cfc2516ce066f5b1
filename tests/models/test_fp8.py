"""models.fp8: FP8 linears through torch._scaled_mm (which torch also runs on the CPU): the quantisation error, the
DiT's blocks swapped, sizes FP8 cannot take refused by name."""
import pytest
import torch

from models.fp8 import FP8, Fp8Linear, fp8_supported, quantize_dit_linears, quantize_rows, relative_error
from models.tiny import build_tiny_pipeline


def test_rows_are_scaled_to_e4m3_range():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    q, scale = quantize_rows(x)
    assert q.dtype == FP8
    assert scale[0, 0] == pytest.approx(2.0 / 448)
    assert float(q[0].float().abs().max()) == 448.0
    torch.testing.assert_close(q.float() * scale, x, atol=0.01, rtol=0.07)


def test_an_fp8_linear_matches_its_linear_to_a_few_percent():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    x = torch.randn(3, 7, 64)  # (B, N, I): any leading axes
    fp8 = Fp8Linear(linear)
    y = fp8(x)
    assert y.shape == (3, 7, 96) and y.dtype == torch.float32
    error = relative_error(linear(x).detach(), y)
    assert 0.005 < error < 0.06  # e4m3 keeps 3 mantissa bits: a few percent, never exact
    assert fp8.weight.dtype == FP8 and fp8.weight.shape == (96, 64)


def test_the_dit_blocks_linears_are_swapped_and_the_latents_stay_close(gen_kwargs):
    pipe = build_tiny_pipeline(seed=0)
    kwargs = dict(gen_kwargs, cfg_scale=1.0)
    reference = pipe.generate_latents(**kwargs)  # (1, 48, 3, 4, 4) after 2 denoising steps
    count = quantize_dit_linears(pipe.dit)
    quantized = pipe.generate_latents(**kwargs)
    linears = sum(isinstance(m, torch.nn.Linear) for block in pipe.dit.blocks for m in block.modules())
    assert count > 0 and linears == 0
    assert sum(isinstance(m, Fp8Linear) for m in pipe.dit.modules()) == count
    assert 0 < relative_error(reference, quantized) < 0.05


def test_sizes_fp8_cannot_take_are_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        Fp8Linear(torch.nn.Linear(60, 64))


def test_fp8_is_not_supported_on_the_cpu():
    assert not fp8_supported("cpu")
