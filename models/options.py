"""Checks of the generation options that every entry point shares (the pipeline call, ``serve.json``, the server's
settings, evaluation): one rule each, a ValueError naming the option. No torch, so light modules can import it."""
from __future__ import annotations

import math
from dataclasses import dataclass

DECODERS = ("wan", "small")  # the world's Wan VAE decoder; its small distilled one (models.frames.small_decoder)


def check_action_guidance(value) -> float:
    """``action_guidance`` must be a finite number >= 1 (1 = off); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"action_guidance must be a number >= 1 (1 = off), got {value!r}")
    return float(value)


def check_action_guidance_rescale(value) -> float:
    """``action_guidance_rescale`` must be a number in [0, 1] (0 = off); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:  # NaN fails too
        raise ValueError(f"action_guidance_rescale must be a number in [0, 1] (0 = off), got {value!r}")
    return float(value)


def check_decoder(value) -> str:
    """``decoder`` must be one of DECODERS; returns it."""
    if value not in DECODERS:
        raise ValueError(f"decoder must be one of {list(DECODERS)}, got {value!r}")
    return value


@dataclass(frozen=True)
class CausalSettings:
    """How a causal world generates: ``block_frames`` latent frames per block (4 video frames each), ``window``
    latent frames of context besides the sink, ``sink`` keeps the first image's frame in context for ever."""
    block_frames: int = 1
    window: int = 3
    sink: bool = True

    def __post_init__(self):
        for name, low in (("block_frames", 1), ("window", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.sink, bool):
            raise ValueError(f"sink must be true or false, got {self.sink!r}")
        if not self.sink and self.window == 0:
            raise ValueError("window must be >= 1 without a sink: a block would see no context at all")

    @property
    def context_frames(self) -> int:
        """Frames a block attends to besides itself, once the window is full."""
        return self.window + int(self.sink)
