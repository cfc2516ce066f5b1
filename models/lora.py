"""LoRA weights as saved by training (peft layout): key normalisation and fusing into a base module.

Keys look like ``blocks.0.self_attn.q.lora_A.default.weight`` (peft) or ``...q.lora_A.weight`` (plain); both
are accepted. Fusing computes ``W += scale * B @ A`` with ``scale = alpha * lora_alpha / rank`` (diffsynth's
trainer uses lora_alpha = rank, so scale = alpha).
"""
from __future__ import annotations

import torch


def lora_pairs(lora_state: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A (r, in), B (out, r))}; raises ValueError on a malformed state dict."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora_state.items():
        plain = key.replace(".default.", ".")
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if plain.endswith(marker):
                pairs.setdefault(plain[: -len(marker)], {})[part] = value
                break
        else:
            raise ValueError(f"lora: unexpected key {key!r} (expected '<module>.lora_A.weight' / '.lora_B.weight')")
    broken = sorted(name for name, parts in pairs.items() if set(parts) != {"lora_A", "lora_B"})
    if broken:
        raise ValueError(f"lora: modules with only one of lora_A/lora_B: {broken}")
    return {name: (parts["lora_A"], parts["lora_B"]) for name, parts in pairs.items()}


@torch.no_grad()
def fuse_lora(module: torch.nn.Module, lora_state: dict, alpha: float = 1.0, lora_alpha: float | None = None) -> int:
    """Add the LoRA deltas into ``module``'s Linear weights in place; returns the number of fused layers.

    Every LoRA module must exist in ``module`` with matching shapes (strict)."""
    pairs = lora_pairs(lora_state)
    modules = dict(module.named_modules())
    missing = sorted(name for name in pairs if name not in modules)
    if missing:
        raise ValueError(f"lora: {len(missing)} target modules not found in the model, e.g. {missing[:3]}")
    for name, (down, up) in pairs.items():
        weight = modules[name].weight  # (out, in)
        rank = down.shape[0]
        if up.shape[1] != rank or (up.shape[0], down.shape[1]) != tuple(weight.shape):
            raise ValueError(f"lora: {name}: A {tuple(down.shape)} / B {tuple(up.shape)} do not fit weight "
                             f"{tuple(weight.shape)}")
        scale = alpha * (rank if lora_alpha is None else lora_alpha) / rank
        delta = up.to(torch.float32) @ down.to(torch.float32)  # (out, in)
        weight.copy_((weight.to(torch.float32) + scale * delta.to(weight.device)).to(weight.dtype))
    return len(pairs)
