"""Checks of the generation options that every entry point shares (the pipeline call, ``serve.json``, the server's
settings, evaluation): one rule each, a ValueError naming the option. No torch, so light modules can import it."""
from __future__ import annotations

import math


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
