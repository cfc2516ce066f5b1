"""Calibration of the optical-flow estimator's decision thresholds on clips with known actions (docs/evaluation.md)."""
from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from training.evaluation import flow as fa
from training.evaluation.metrics import score_intervals


def calibrate(clips: list[dict], grid: dict[str, list[float]] | None = None) -> list[dict]:
    """Sweep the decision thresholds of ``FlowSettings`` on clips with known actions (the motion fits are made
    once); rows ``{settings..., accuracy, exact_match, min_f1}`` sorted best first (accuracy, then exact match)."""
    base = fa.FlowSettings()
    grid = grid or {"strength_min": [0.015, 0.02, 0.03], "ratio_min": [1.3, 1.7, 2.2],
                    "translation_min": [0.002, 0.003, 0.004], "rotation_min": [0.15, 0.2, 0.25, 0.3]}
    fits, commanded = [], []
    for clip in clips:
        grays = [fa.work_gray(f, base.work_width) for f in np.asarray(clip["frames"])[::4]]
        focal_px = base.focal * grays[0].shape[1]
        for t in range(len(grays) - 1):
            points = fa.interval_points(grays[t], grays[t + 1], focal_px)
            fits.append(None if points is None else fa.fit_motion(*points))
        commanded.append(np.asarray(clip["actions"])[:len(grays) - 1])
    commanded = np.concatenate(commanded)
    rows = []
    for values in itertools.product(*grid.values()):
        settings = replace(base, **dict(zip(grid, values)))
        per = [fa.interval_motion(fit, settings) for fit in fits]
        motion = {key: np.array([p[key] for p in per]) for key in per[0]}
        scores = score_intervals(fa.motion_to_actions(motion, settings), commanded)
        f1 = [s["f1"] for s in scores["per_action"].values() if s["f1"] is not None]
        rows.append({**dict(zip(grid, values)), "accuracy": scores["accuracy"], "exact_match": scores["exact_match"],
                     "min_f1": min(f1) if f1 else None})
    return sorted(rows, key=lambda r: (-(r["accuracy"] or 0), -(r["exact_match"] or 0)))
