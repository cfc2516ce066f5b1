"""Training fixtures: a random LoRA for the tiny DiT."""
import pytest
import torch

TARGETS = ["self_attn.q", "self_attn.v", "ffn.0"]


def make_random_lora(dit, rank=4, seed=0):
    """A LoRA with non-zero A and B (peft starts B at zero, which would make the test vacuous)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in dit.named_modules():
        if any(name.endswith(t) for t in TARGETS):
            out_features, in_features = module.weight.shape
            state[f"{name}.lora_A.default.weight"] = torch.randn(rank, in_features, generator=generator) * 0.1
            state[f"{name}.lora_B.default.weight"] = torch.randn(out_features, rank, generator=generator) * 0.1
    return state


@pytest.fixture
def random_lora():
    """``random_lora(dit, rank=4, seed=0)`` -> a peft-layout LoRA state dict for ``TARGETS`` of ``dit``."""
    return make_random_lora
