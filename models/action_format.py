"""The action format: the one place that defines the 8 drone actions and their units.

Raw actions are ``(T, 2, 8)`` (or batched ``(B, T, 2, 8)``):
    T    latent-frame intervals (``num_actions_for_frames(num_frames)``); action t drives latent frame t+1
    2    [binary flag (0/1), magnitude (>= 0)]
    8    ACTION_NAMES, in the seed's order

Magnitude units (as Sekai-derived data, see docs and training.prepare_sekai):
    Forward/Back/Left/Right   translation per 4-frame interval in clip-normalised units (typical ~0.01)
    Yaw/Pitch                 rotation per 4-frame interval in degrees (typical 0.4-1.8 while turning)
MAGNITUDE_SCALE multiplies the first four by 100 so every channel is ~1 when fed to the controller.
``split_actions`` is the only place the scale is applied.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import torch

ACTION_NAMES: tuple[str, ...] = (
    "Forward", "Back", "Left", "Right", "Yaw Left", "Yaw Right", "Pitch Up", "Pitch Down",
)
NUM_ACTIONS = len(ACTION_NAMES)
MAGNITUDE_SCALE: tuple[float, ...] = (100.0, 100.0, 100.0, 100.0, 1.0, 1.0, 1.0, 1.0)
FRAMES_PER_LATENT = 4  # the Wan2.2 VAE's temporal compression
# Pairs of opposite actions (index, index): holding both at once cancels out.
OPPOSITE_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7))
TRANSLATION_UNIT = "clip-normalised units per 4-frame interval"
ROTATION_UNIT = "degrees per 4-frame interval"


def num_actions_for_frames(num_frames: int) -> int:
    """Number of action steps (latent frames after the first) for a clip of ``num_frames`` frames."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int):
        raise ValueError(f"num_frames must be an int, got {type(num_frames).__name__}")
    if num_frames < 1 or num_frames % FRAMES_PER_LATENT != 1:
        raise ValueError(
            f"num_frames must be 4k+1 (1, 5, 9, ..., 81), got {num_frames}: "
            "the VAE compresses 4 frames into one latent frame after the first")
    return (num_frames - 1) // FRAMES_PER_LATENT


def num_frames_for_actions(num_actions: int) -> int:
    """Inverse of num_actions_for_frames: frames of a clip driven by ``num_actions`` steps."""
    return FRAMES_PER_LATENT * int(num_actions) + 1


def _as_tensor(actions, name: str) -> torch.Tensor:
    if isinstance(actions, (str, bytes)):
        try:
            actions = json.loads(actions)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name}: not valid JSON ({error.msg} at position {error.pos})") from None
    if isinstance(actions, torch.Tensor):
        return actions.detach().to(torch.float32)
    try:
        return torch.as_tensor(actions, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name}: expected a numeric (T, 2, 8) array, got {type(actions).__name__} "
                         f"({error})") from None


def parse_actions(actions, name: str = "actions") -> torch.Tensor:
    """Validate raw actions (tensor, nested list or JSON string) and return float32 ``(B, T, 2, 8)``."""
    raw = _as_tensor(actions, name)
    if raw.dim() == 3:
        raw = raw.unsqueeze(0)
    if raw.dim() != 4 or raw.shape[2] != 2 or raw.shape[3] != NUM_ACTIONS or raw.shape[1] == 0:
        raise ValueError(
            f"{name}: expected shape (T, 2, {NUM_ACTIONS}) or (B, T, 2, {NUM_ACTIONS}) with T >= 1 "
            f"([binary, magnitude] x {NUM_ACTIONS} actions), got {tuple(raw.shape)}")
    if not torch.isfinite(raw).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    binary = raw[:, :, 0]  # (B, T, 8)
    if not ((binary == 0) | (binary == 1)).all():
        bad = binary[(binary != 0) & (binary != 1)][0].item()
        raise ValueError(f"{name}: binary flags (index 0 of axis 2) must be 0 or 1, found {bad:g}")
    if (raw[:, :, 1] < 0).any():
        raise ValueError(f"{name}: magnitudes (index 1 of axis 2) must be >= 0, found {raw[:, :, 1].min().item():g}")
    return raw


def check_scale(scale: Sequence[float], name: str = "scale") -> torch.Tensor:
    scale_t = torch.as_tensor(scale, dtype=torch.float32).flatten()
    if scale_t.numel() != NUM_ACTIONS or not torch.isfinite(scale_t).all() or (scale_t <= 0).any():
        raise ValueError(f"{name}: expected {NUM_ACTIONS} positive finite numbers, got {list(scale)}")
    return scale_t


def split_actions(actions, scale: Sequence[float] = MAGNITUDE_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``(T,2,8)``/``(B,T,2,8)`` -> ``(binary, magnitude)``, each float32 ``(B, T, 8)``.

    The magnitude scale is applied here and nowhere else.
    """
    raw = parse_actions(actions)  # (B, T, 2, 8)
    binary = raw[:, :, 0].contiguous()  # (B, T, 8)
    magnitude = raw[:, :, 1] * check_scale(scale)  # (B, T, 8)
    return binary, magnitude


def merge_actions(binary: torch.Tensor, magnitude: torch.Tensor,
                  scale: Sequence[float] = MAGNITUDE_SCALE) -> torch.Tensor:
    """Inverse of split_actions: scaled ``(B,T,8)`` pair -> raw ``(B, T, 2, 8)``."""
    raw_magnitude = magnitude.float() / check_scale(scale).to(magnitude.device)  # (B, T, 8)
    return torch.stack([binary.float(), raw_magnitude], dim=2)  # (B, T, 2, 8)


def check_split_actions(action_binary, action_magnitude) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the seed's already-scaled form; returns float32 ``(B, T, 8)`` tensors (scale untouched)."""
    if action_binary is None:
        raise ValueError("action_binary is required when action_magnitude is given")
    binary = _as_tensor(action_binary, "action_binary")
    magnitude = torch.zeros_like(binary) if action_magnitude is None else \
        _as_tensor(action_magnitude, "action_magnitude")
    if binary.dim() == 2:
        binary = binary.unsqueeze(0)
    if magnitude.dim() == 2:
        magnitude = magnitude.unsqueeze(0)
    for name, value in (("action_binary", binary), ("action_magnitude", magnitude)):
        if value.dim() != 3 or value.shape[-1] != NUM_ACTIONS or value.shape[1] == 0:
            raise ValueError(f"{name}: expected shape (T, {NUM_ACTIONS}) or (B, T, {NUM_ACTIONS}), "
                             f"got {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name}: contains NaN or Inf")
    if binary.shape != magnitude.shape:
        raise ValueError(f"action_binary {tuple(binary.shape)} and action_magnitude {tuple(magnitude.shape)} "
                         "differ in shape")
    if not ((binary == 0) | (binary == 1)).all():
        raise ValueError("action_binary: flags must be 0 or 1")
    if (magnitude < 0).any():
        raise ValueError("action_magnitude: magnitudes must be >= 0")
    return binary, magnitude


def empty_actions(num_steps: int) -> torch.Tensor:
    """A hover: ``(T, 2, 8)`` zeros."""
    return torch.zeros(num_steps, 2, NUM_ACTIONS)


def constant_actions(num_steps: int, magnitudes: dict[str, float]) -> torch.Tensor:
    """``(T, 2, 8)`` holding the named actions at the given raw magnitudes for every step."""
    raw = empty_actions(num_steps)
    for action_name, value in magnitudes.items():
        if action_name not in ACTION_NAMES:
            raise ValueError(f"unknown action {action_name!r}; expected one of {list(ACTION_NAMES)}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"magnitude of {action_name!r} must be a finite number >= 0, got {value}")
        index = ACTION_NAMES.index(action_name)
        raw[:, 0, index] = 1.0 if value > 0 else 0.0
        raw[:, 1, index] = value
    return raw


# ---- what a held key sends -------------------------------------------------------------------------------------
# Raw units: translation 0.01 clip-normalised units per 4-frame interval, rotation 1 degree per interval
# (the median Sekai translation step is ~0.0093; turning yaw is 0.4-1.8 degrees per interval).
DEFAULT_FULL_SCALE: tuple[float, ...] = (0.01, 0.01, 0.01, 0.01, 1.0, 1.0, 1.0, 1.0)
FULL_SCALE_PERCENTILE = "p90"


def full_scale_from_stats(stats: dict | None) -> tuple[tuple[float, ...], list[str]]:
    """Per-action full-scale raw magnitude (a held key, a fully deflected stick) from a controller's training
    ``action_stats`` (``{"actions": {name: {"p90": ...}}}``) at FULL_SCALE_PERCENTILE, or DEFAULT_FULL_SCALE where
    the stats lack the action; and where each value came from ("action_stats p90" or "default")."""
    per_action = (stats or {}).get("actions") or {}
    scale, source = [], []
    for index, name in enumerate(ACTION_NAMES):
        value = (per_action.get(name) or {}).get(FULL_SCALE_PERCENTILE)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            scale.append(float(value))
            source.append(f"action_stats {FULL_SCALE_PERCENTILE}")
        else:
            scale.append(DEFAULT_FULL_SCALE[index])
            source.append("default")
    return tuple(scale), source
