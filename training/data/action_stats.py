"""Per-channel statistics of raw ``(T, 2, 8)`` actions, shared by the dataset builders and the trainer.

Magnitudes are raw (``models.action_format`` units, MAGNITUDE_SCALE not applied): translation per 4-frame interval
in clip-normalised units, rotation in degrees per interval. Statistics of a channel use only its active intervals
(binary flag 1).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.action_format import ACTION_NAMES, NUM_ACTIONS, ROTATION_UNIT, TRANSLATION_UNIT

PERCENTILES = (5, 25, 50, 75, 90, 95)


def stack_actions(actions) -> np.ndarray:
    """A list of ``(T, 2, 8)`` clips (lists, arrays, tensors, JSON strings) or one ``(M, 2, 8)``/``(B, T, 2, 8)``
    array -> ``(M, 2, 8)`` float64 intervals."""
    def as_array(value):
        if isinstance(value, (str, bytes)):
            value = json.loads(value)
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        return np.asarray(value, dtype=np.float64)

    if isinstance(actions, (list, tuple)):
        parts = [as_array(clip).reshape(-1, 2, NUM_ACTIONS) for clip in actions]
        stacked = np.concatenate(parts) if parts else np.zeros((0, 2, NUM_ACTIONS))
    else:
        stacked = as_array(actions)
    if stacked.shape[-2:] != (2, NUM_ACTIONS):
        raise ValueError(f"actions: expected (..., 2, {NUM_ACTIONS}) arrays, got {stacked.shape}")
    return stacked.reshape(-1, 2, NUM_ACTIONS)


def compute_action_stats(actions) -> dict:
    """``{"num_clips", "num_intervals", "fraction_any_active", "actions": {name: {count, fraction_active, mean, std,
    min, p5, p25, p50, p75, p90, p95, max, unit}}}`` of clips (see ``stack_actions``).

    Moments and percentiles are None for a channel that is never active; num_clips is None for a flat (M,2,8) input.
    """
    stacked = stack_actions(actions)  # (M, 2, 8)
    total = len(stacked)
    per_action = {}
    for index, name in enumerate(ACTION_NAMES):
        active = stacked[:, 1, index][stacked[:, 0, index] > 0]  # (count,) magnitudes while active
        entry = {"count": int(active.size), "fraction_active": float(active.size / total) if total else 0.0}
        if active.size:
            entry.update(mean=float(active.mean()), std=float(active.std()), min=float(active.min()),
                         max=float(active.max()),
                         **{f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(active, PERCENTILES))})
        else:
            entry.update(mean=None, std=None, min=None, max=None, **{f"p{q}": None for q in PERCENTILES})
        entry["unit"] = TRANSLATION_UNIT if index < 4 else ROTATION_UNIT
        per_action[name] = entry
    any_active = (stacked[:, 0] > 0).any(axis=1)  # (M,)
    return {"num_clips": _num_clips(actions), "num_intervals": total,
            "fraction_any_active": float(any_active.mean()) if total else 0.0, "actions": per_action}



def _num_clips(actions):
    if isinstance(actions, (list, tuple)):
        return len(actions)
    shape = getattr(actions, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 4 else None


def plot_action_histograms(actions, path, bins: int = 30) -> None:
    """One histogram per action of its active magnitudes, saved as a PNG (matplotlib Agg, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacked = stack_actions(actions)
    figure, axes = plt.subplots(2, 4, figsize=(14, 6))
    for index, (name, axis) in enumerate(zip(ACTION_NAMES, axes.flat)):
        active = stacked[:, 1, index][stacked[:, 0, index] > 0]
        if active.size:
            axis.hist(active, bins=bins, color="tab:blue" if index < 4 else "tab:orange")
        axis.set_title(f"{name} (n={active.size})")
        axis.set_xlabel("units / interval" if index < 4 else "degrees / interval")
    figure.suptitle(f"active action magnitudes over {len(stacked)} intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def write_action_stats(actions, out_dir, plot: bool = True) -> dict:
    """Write ``action_stats.json`` (and ``action_hist.png``) into ``out_dir``; returns the statistics."""
    out_dir = Path(out_dir)
    stats = compute_action_stats(actions)
    (out_dir / "action_stats.json").write_text(json.dumps(stats, indent=2))
    if plot:
        plot_action_histograms(actions, out_dir / "action_hist.png")
    return stats
