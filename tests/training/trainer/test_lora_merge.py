"""training.trainer.lora_merge: the state-dict merge equals base + peft LoRA."""
import pytest
import torch

from models.tiny import build_tiny_pipeline
from training.trainer.lora_merge import merge_lora_state

TARGETS = ["self_attn.q", "self_attn.v", "ffn.0"]  # what the random_lora fixture patches


def dit_output(dit):
    from diffsynth.pipelines.wan_video import model_fn_wan_video

    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 48, 3, 4, 4, generator=generator)
    context = torch.randn(1, 8, 32, generator=generator)
    return model_fn_wan_video(dit=dit, latents=latents, timestep=torch.tensor([700.0]), context=context,
                              fuse_vae_embedding_in_latents=True)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_merged_state_equals_base_plus_peft_lora(alpha, random_lora):
    from peft import LoraConfig, inject_adapter_in_model

    base = build_tiny_pipeline(0).dit
    lora = random_lora(base)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged_dit = build_tiny_pipeline(0).dit
    merged_dit.load_state_dict(merge_lora_state(base.state_dict(), lora, alpha=alpha))
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # input not modified

    # peft at scaling lora_alpha / r = alpha (lora_alpha = alpha * rank).
    peft_dit = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4 * alpha, target_modules=TARGETS),
                                       build_tiny_pipeline(0).dit)
    assert not peft_dit.load_state_dict(lora, strict=False).unexpected_keys
    with torch.no_grad():
        expected, got = dit_output(peft_dit), dit_output(merged_dit)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(dit_output(base), expected, atol=1e-3)


def test_missing_target_is_an_error():
    base = build_tiny_pipeline(0).dit.state_dict()
    lora = {"blocks.9.self_attn.q.lora_A.weight": torch.zeros(4, 64),
            "blocks.9.self_attn.q.lora_B.weight": torch.zeros(64, 4)}
    with pytest.raises(ValueError, match="blocks.9.self_attn.q"):
        merge_lora_state(base, lora)
