"""The measures of ``training.evaluate --long_flight`` (``training.evaluation.long_flight``): per frame, per window,
drift, the first vs the last seconds and the issue's goals.

Per window (intervals ``[a, b)`` = frames 4a+1 .. 4b, pooled over scenes):
    accuracy         action-following accuracy of the window's intervals (``training.evaluation.metrics``), and the
                     estimator's own on the true video (``truth_accuracy``, its ceiling)
    psnr_db          PSNR of each generated frame to its true frame, averaged
    sharpness_ratio  generated / true sharpness, sharpness = variance of the 4-neighbour Laplacian of the luma
                     (per scene the ratio of the window's means, then averaged over scenes); 1 = as sharp as truth
    palette_distance colour-histogram distance of each generated frame to its true frame (``rollout.palette_distance``:
                     0 = same colours, 1 = none in common), averaged
    vae_*            the same three for the true video through the world's VAE, decoded as the world decodes (its
                     ceiling: a world cannot look more like the truth than its decoder can)
Drift per metric (WorldRoamBench's "worst window relative to the best"): ``(best - worst) / best`` over the windows of
a higher-is-better score, 0 = steady. Scores: accuracy, psnr_db, sharpness agreement ``min(r, 1 / r)`` of the ratio r
(blurring and over-sharpening both count) and palette similarity ``1 - palette_distance``.
"""
from __future__ import annotations

import numpy as np

from models.action_format import FRAMES_PER_LATENT
from training.evaluation.metrics import active_flags, balanced_accuracy, score_intervals
from training.evaluation.rollout import palette_distance, psnr

GOAL_DRIFT, GOAL_EDGE_DROP = 0.15, 0.05  # the targets: sharpness/palette drift, last-vs-first accuracy drop


# ------------------------------------------------------------------------------------------------------ frames
def sharpness(frame: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luma (BT.601) of an (H, W, 3) uint8 frame: 0 for a flat one."""
    luma = frame.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H, W)
    lap = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]  # (H-2, W-2)
    return float(lap.var())


def window_bounds(steps: int, window_steps: int) -> list[tuple[int, int]]:
    """Intervals ``[a, b)`` of each window; the last one is shorter when ``steps`` is not a whole number of
    windows. A window's frames are 4a+1 .. 4b (those its intervals generated)."""
    return [(a, min(a + window_steps, steps)) for a in range(0, steps, window_steps)]


def drift(scores) -> float | None:
    """``(best - worst) / best`` of higher-is-better scores (None entries skipped): 0 = steady."""
    values = [v for v in scores if v is not None]
    if not values or max(values) <= 0:
        return None
    return float((max(values) - min(values)) / max(values))


def sharpness_agreement(ratio: float | None) -> float | None:
    """``min(r, 1 / r)``: 1 = as sharp as the truth, lower = blurrier or over-sharp."""
    return None if ratio is None or ratio <= 0 else float(min(ratio, 1.0 / ratio))


# ---------------------------------------------------------------------------------------------------- scoring
def frame_measures(generated: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame (N,): psnr_db, palette_distance, sharpness of the generated and of the true frame."""
    if generated.shape != true.shape:
        raise ValueError(f"generated {generated.shape} and true {true.shape} videos differ in shape")
    return {"psnr_db": np.array([psnr(g, t) for g, t in zip(generated, true)]),
            "palette_distance": np.array([palette_distance(g, t) for g, t in zip(generated, true)]),
            "sharp_generated": np.array([sharpness(g) for g in generated]),
            "sharp_true": np.array([sharpness(t) for t in true])}


def picture_scores(scenes: list[dict], key: str, frames: slice) -> dict:
    """psnr_db, sharpness_ratio and palette_distance of ``scene[key]`` (``frame_measures``) over ``frames``."""
    ratios = [s[key]["sharp_generated"][frames].mean() / s[key]["sharp_true"][frames].mean()
              for s in scenes if s[key]["sharp_true"][frames].mean() > 0]
    return {"psnr_db": float(np.mean([s[key]["psnr_db"][frames].mean() for s in scenes])),
            "sharpness_ratio": float(np.mean(ratios)) if ratios else None,
            "palette_distance": float(np.mean([s[key]["palette_distance"][frames].mean() for s in scenes]))}


def window_scores(scenes: list[dict], a: int, b: int) -> dict:
    """The metrics of intervals [a, b) pooled over ``scenes`` (each ``{measures, vae_measures, estimated,
    truth_estimated, commanded}``)."""
    frames = slice(FRAMES_PER_LATENT * a + 1, FRAMES_PER_LATENT * b + 1)

    def accuracy(key):
        return balanced_accuracy(active_flags(np.concatenate([s[key][a:b] for s in scenes])),
                                 active_flags(np.concatenate([s["commanded"][a:b] for s in scenes])))
    return {"accuracy": accuracy("estimated"), "truth_accuracy": accuracy("truth_estimated"),
            **picture_scores(scenes, "measures", frames),
            **{f"vae_{k}": v for k, v in picture_scores(scenes, "vae_measures", frames).items()}}


def drifts(windows: list[dict], prefix: str = "") -> dict:
    """Drift of each metric over the windows (see the module docstring for the orientation of each); ``prefix``
    "vae_": of the VAE ceiling (no accuracy)."""
    out = {} if prefix else {"accuracy": drift([w["accuracy"] for w in windows])}
    return {**out, "psnr_db": drift([w[prefix + "psnr_db"] for w in windows]),
            "sharpness": drift([sharpness_agreement(w[prefix + "sharpness_ratio"]) for w in windows]),
            "palette": drift([1.0 - w[prefix + "palette_distance"] for w in windows])}


def rounded(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def summarise_world(info: dict, scenes: list[dict], steps: int, window_steps: int, edge_steps: int,
                    fps: float) -> dict:
    """A world's entry (``info``: label, world, generation, serve, ...): windows, drifts, edges, overall action
    following, out-and-back, goals."""
    windows = []
    for a, b in window_bounds(steps, window_steps):
        row = {key: rounded(value) for key, value in window_scores(scenes, a, b).items()}
        windows.append({"start_s": a * FRAMES_PER_LATENT / fps, "end_s": b * FRAMES_PER_LATENT / fps,
                        "intervals": (b - a) * len(scenes), **row})
    first, last = window_scores(scenes, 0, edge_steps), window_scores(scenes, steps - edge_steps, steps)
    edges = {"seconds": edge_steps * FRAMES_PER_LATENT / fps, "first_accuracy": rounded(first["accuracy"]),
             "last_accuracy": rounded(last["accuracy"]), "first_truth_accuracy": rounded(first["truth_accuracy"]),
             "last_truth_accuracy": rounded(last["truth_accuracy"])}
    edges["change"] = None if None in (first["accuracy"], last["accuracy"]) else \
        rounded(last["accuracy"] - first["accuracy"])
    motion = {key: np.concatenate([s["motion"][key] for s in scenes]) for key in scenes[0]["motion"]}
    overall = score_intervals(np.concatenate([s["estimated"] for s in scenes]),
                              np.concatenate([s["commanded"] for s in scenes]), motion)
    drift_values = {key: rounded(value) for key, value in drifts(windows).items()}
    vae_drift = {key: rounded(value) for key, value in drifts(windows, "vae_").items()}
    out_and_back = {name: {side: {key: rounded(np.mean([s["out_and_back"][name][side][key] for s in scenes]), 2)
                                  for key in ("return_psnr_db", "far_psnr_db")} for side in ("generated", "truth")}
                    for name in scenes[0]["out_and_back"]}
    goals = {"sharpness_drift_within_15pct": _within(drift_values["sharpness"], GOAL_DRIFT),
             "palette_drift_within_15pct": _within(drift_values["palette"], GOAL_DRIFT),
             "last_accuracy_within_0.05_of_first": None if edges["change"] is None
             else edges["change"] >= -GOAL_EDGE_DROP}
    return {**info, "windows": windows, "drift": drift_values, "vae_drift": vae_drift, "edges": edges,
            "overall": {"accuracy": rounded(overall["accuracy"]), "p_value": overall["chance"]["p_value"],
                        "exact_match": rounded(overall["exact_match"]), "intervals": overall["intervals"],
                        "per_action": {n: rounded(s["balanced_accuracy"]) for n, s in overall["per_action"].items()},
                        "psnr_db": rounded(np.mean([w["psnr_db"] for w in windows]), 2),
                        "vae_psnr_db": rounded(np.mean([w["vae_psnr_db"] for w in windows]), 2)},
            "out_and_back": out_and_back, "goals": goals,
            "scenes": [{"name": s["name"], "prompt": s["prompt"], "max_distance": rounded(s["max_distance"]),
                        "out_and_back_intervals": s["out_and_back_intervals"]}
                       for s in scenes]}


def _within(value, limit):
    return None if value is None else value <= limit
