"""Shared bench helpers: full-size random-weight pipelines, timing with device sync, peak memory, sizes, budgets.

Full size = the Wan2.2-TI2V-5B architecture with random weights (speed does not depend on the values):
DiT dim 3072, 30 layers, 24 heads, ffn 14336, text_dim 4096, in/out 48, patch 1x2x2, fused first frame, per-token
timestep; the real VAE38 (z 48, dim 160, decoder 256). The 5B umT5 text encoder is NOT built: prompts are served
from the pipeline's prompt cache, filled with random (1, 512, 4096) embeddings, so "prompt encode" is not measured
at full size (a flight encodes its prompt once; the tiny preset on CPU measures its small T5 instead).
"""
from __future__ import annotations

import platform
import time
from contextlib import contextmanager

import torch

from models.loading import build_pipeline

PROMPT = "a drone flies over green hills under a blue sky"
NEGATIVE = "blurry, static"
TEXT_TOKENS = 512  # umT5 sequence length of Wan2.2


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def syncer(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def now(sync) -> float:
    sync()
    return time.perf_counter()


@contextmanager
def peak_memory(device: torch.device, out: dict, key: str = "peak_gpu_gb"):
    """Record torch.cuda.max_memory_allocated (GB) over the block into out[key] (None on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        out[key] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def build_full_pipeline(device: torch.device, dtype, layers: int = 30, injection_type: str = "cross_attn_frame"):
    """The full-size architecture, random weights, built directly on ``device`` (``models.loading``); controller
    attached, random prompt embeddings in the prompt cache."""
    pipe = build_pipeline(preset="random-5b", device=device, torch_dtype=dtype, layers=layers,
                          controller_overrides={"injection_type": injection_type})
    fill_prompt_cache(pipe, {PROMPT: torch.randn(1, TEXT_TOKENS, 4096), NEGATIVE: torch.randn(1, TEXT_TOKENS, 4096)})
    return pipe


def build_tiny_pipeline(device: torch.device, dtype):
    """The tiny random preset (models.tiny) with its controller: real T5, real (narrow) VAE."""
    return build_pipeline(preset="tiny", device=str(device), torch_dtype=dtype)


def fill_prompt_cache(pipe, contexts: dict) -> None:
    """Serve these prompts from the pipeline's prompt cache (CachedPromptEmbedder) without a text encoder."""
    pipe.prompt_cache_size = max(pipe.prompt_cache_size, len(contexts) + 2)
    for prompt, context in contexts.items():
        key = (prompt, id(pipe.text_encoder), str(pipe.device), pipe.torch_dtype)
        pipe.prompt_cache[key] = context.to(device=pipe.device, dtype=pipe.torch_dtype)  # (1, S, 4096)


def parse_size(text: str) -> tuple[int, int, int]:
    """"480x832x33" -> (height, width, frames)."""
    try:
        height, width, frames = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size: expected HEIGHTxWIDTHxFRAMES like 480x832x33, got {text!r}") from None
    if height % 32 or width % 32 or (frames - 1) % 4:
        raise ValueError(f"size: {text!r} needs height and width multiples of 32 and frames = 4k+1")
    return height, width, frames


class Deadline:
    """A wall-clock budget for a bench: configs that would start after it are skipped (and listed)."""

    def __init__(self, seconds: float | None):
        self.end = None if not seconds else time.monotonic() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def allows(self, name: str, estimate_s: float = 0.0) -> bool:
        if self.left() > estimate_s:
            return True
        self.skipped.append(name)
        print(f"skipped {name}: time budget spent", flush=True)
        return False
