"""FP8 linears for the DiT: weights in float8 (e4m3) with one scale per output row, activations quantised per token
as they come, one ``torch._scaled_mm`` per layer (H100-class GPUs run it on their FP8 tensor cores; torch also runs
it on the CPU, slowly, which the tests use). No torchao: torch's own op, so nothing to install.

Axis legend: N tokens (all leading axes flattened), I in features, O out features.

``quantize_dit_linears(dit)`` swaps the linear layers of every DiT block (self- and cross-attention projections, the
feed-forward) for ``Fp8Linear``; embeddings, the timestep path and the head stay as they are (they are small and
their precision matters most). Scales are absolute maxima / 448 (e4m3's largest value): no calibration data. The
error against the bf16 model is what ``bench/decode_latency.py`` reports (``fp8`` cells); ``fp8_supported`` says
whether a device has FP8 matmuls.
"""
from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_SCALE = 1e-12


def fp8_supported(device) -> bool:
    """FP8 tensor cores: CUDA compute capability 8.9 or newer (L4/L40S 8.9, H100/H200 9.0, B200 10.0)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and \
        torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, K) -> (float8 (R, K), float32 scales (R, 1)) with x ~= q * scale, one scale per row."""
    scale = x.detach().abs().amax(dim=1, keepdim=True).float().clamp_min(MIN_SCALE) / FP8_MAX  # (R, 1)
    return (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(torch.nn.Module):
    """A frozen ``nn.Linear`` in FP8 (inference only): ``y = (q_x s_x) (q_w s_w)^T + b`` in the input's dtype."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"fp8: {self.in_features}x{self.out_features} linear: FP8 matmuls need sizes that "
                             f"are multiples of 16")
        weight, scale = quantize_rows(linear.weight.detach())  # (O, I) float8, (O, 1)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, O)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, scale = quantize_rows(x.reshape(-1, self.in_features))  # (N, I) float8, (N, 1)
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        bias = None if self.bias is None else self.bias.to(out_dtype)
        y = torch._scaled_mm(q, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=bias,
                             out_dtype=out_dtype)  # (N, O); weight.t() is column-major, as the op wants
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise"


def quantize_dit_linears(dit) -> int:
    """Swap every ``nn.Linear`` inside the DiT's blocks for an ``Fp8Linear``, in place; returns how many."""
    count = 0
    for block in dit.blocks:
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(module, child_name, Fp8Linear(child))
                    count += 1
    return count


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """||other - reference|| / ||reference|| (float32)."""
    reference, other = reference.float(), other.float()
    return float((other - reference).norm() / reference.norm().clamp_min(1e-12))
