"""Does a video do what its actions asked? The scores of ``training.evaluate``.

Each latent interval (4 frames) of a video is read with ``training.evaluation.flow`` (optical flow -> camera motion
-> the 8 actions) and compared with the commanded ``(T, 2, 8)``. The headline ``accuracy`` ("action-following
accuracy") is the mean over the 8 actions of the balanced accuracy (recall on the intervals that commanded the
action and correct rejection on those that did not), so a video that ignores its actions scores 0.5 whatever the
mix of actions. Also: per-action precision/recall/F1, the strict per-interval exact match with its chance level
and kappa, a confusion matrix, magnitude correlations. A video longer or shorter than its actions is scored on the
intervals both have (as training uses the prefix), and the result says so.
"""
from __future__ import annotations

import sys

import numpy as np

from models.action_format import ACTION_NAMES, FRAMES_PER_LATENT, NUM_ACTIONS, OPPOSITE_PAIRS, parse_actions
from models.media import read_video
from training.evaluation.flow import (
    AXES,
    AXIS_ACTIONS,
    FlowSettings,
    boundary_motion,
    estimate_motion,
    motion_to_actions,
)

CONFUSION_LABELS = ACTION_NAMES + ("none",)
CHANCE_ACCURACY = 0.5  # the headline of a video that ignores its actions (balanced accuracy), in expectation
PERMUTATIONS = 200  # shuffles of the chance test
CHANCE_P = 0.05  # a headline whose permutation p-value is above this is reported as "near chance"
PAIRS_REPORTED = {"forward_back": (("Forward", "Back"),), "left_right": (("Left", "Right"),),
                  "yaw_left_right": (("Yaw Left", "Yaw Right"),), "pitch_up_down": (("Pitch Up", "Pitch Down"),),
                  "yaw_strafe": tuple((a, b) for a in ("Yaw Left", "Yaw Right") for b in ("Left", "Right"))}


# --------------------------------------------------------------------------------------------------- metrics
def check_actions(actions, name: str = "actions") -> np.ndarray:
    """Validated raw ``(T, 2, 8)`` float64 (models.action_format rules)."""
    raw = parse_actions(np.asarray(actions, dtype=np.float32) if isinstance(actions, np.ndarray) else actions, name)
    if raw.shape[0] != 1:
        raise ValueError(f"{name}: expected one (T, 2, 8) sequence, got a batch of {raw.shape[0]}")
    return raw[0].double().numpy()


def active_flags(actions: np.ndarray) -> np.ndarray:
    """``(T, 8)`` bool: the binary part, with opposite actions held together cancelling (as the server does)."""
    flags = actions[:, 0] > 0  # (T, 8)
    for i, j in OPPOSITE_PAIRS:
        both = flags[:, i] & flags[:, j]
        flags[both, i] = flags[both, j] = False
    return flags


def commanded_axes(actions: np.ndarray) -> np.ndarray:
    """Signed commanded amount per axis ``(T, 4)`` (AXES order: + = Forward, Right, Yaw Right, Pitch Up)."""
    amount = actions[:, 1] * (actions[:, 0] > 0)  # (T, 8)
    return np.stack([amount[:, ACTION_NAMES.index(pos)] - amount[:, ACTION_NAMES.index(neg)]
                     for pos, neg in (AXIS_ACTIONS[axis] for axis in AXES)], axis=1)


def motion_axes(motion: dict) -> np.ndarray:
    """Estimated signed amount per axis ``(T, 4)`` from ``estimate_motion`` (continuous, before thresholds)."""
    return np.stack([np.asarray(motion[axis], dtype=np.float64) for axis in AXES], axis=1)


def _ratio(numerator: float, denominator: float):
    return float(numerator / denominator) if denominator > 0 else None


def _pearson(a: np.ndarray, b: np.ndarray):
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def per_action_scores(est: np.ndarray, cmd: np.ndarray) -> dict:
    """Precision/recall/F1/balanced accuracy per action from ``(N, 8)`` bool flags (None where undefined)."""
    scores = {}
    for index, name in enumerate(ACTION_NAMES):
        e, c = est[:, index], cmd[:, index]
        tp, fp, fn = int((e & c).sum()), int((e & ~c).sum()), int((~e & c).sum())
        tn = len(c) - tp - fp - fn
        recall, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        scores[name] = {"precision": _ratio(tp, tp + fp), "recall": recall, "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                        "balanced_accuracy": None if recall is None or specificity is None
                        else 0.5 * (recall + specificity),
                        "support": tp + fn, "predicted": tp + fp}
    return scores


def confusion_matrix(est: np.ndarray, cmd: np.ndarray) -> np.ndarray:
    """``(9, 9)`` counts, rows commanded, columns estimated, over ACTION_NAMES + none. Per interval: a commanded
    action that was read counts on the diagonal; one that was missed counts under each action read in its place
    (estimated, not commanded), or under none; an action read but not commanded, with every commanded one found,
    counts in row none; an interval commanding and reading nothing counts at (none, none)."""
    matrix = np.zeros((NUM_ACTIONS + 1, NUM_ACTIONS + 1), dtype=np.int64)
    none = NUM_ACTIONS
    for e, c in zip(est, cmd):
        extra = np.flatnonzero(e & ~c)
        missed = np.flatnonzero(c & ~e)
        for i in np.flatnonzero(c & e):
            matrix[i, i] += 1
        for i in missed:
            for j in extra if len(extra) else [none]:
                matrix[i, j] += 1
        if not len(missed):
            for j in extra:
                matrix[none, j] += 1
        if not c.any() and not e.any():
            matrix[none, none] += 1
    return matrix


def confusion_rates(matrix: np.ndarray, cmd: np.ndarray) -> dict:
    """Share of the commanded intervals of either side of a pair read as the other side (e.g. forward_back)."""
    support = cmd.sum(0)  # (8,)
    rates = {}
    for key, pairs in PAIRS_REPORTED.items():
        names = sorted({n for pair in pairs for n in pair}, key=ACTION_NAMES.index)
        swapped = sum(matrix[ACTION_NAMES.index(a), ACTION_NAMES.index(b)] +
                      matrix[ACTION_NAMES.index(b), ACTION_NAMES.index(a)] for a, b in pairs)
        rates[key] = _ratio(swapped, sum(support[ACTION_NAMES.index(n)] for n in names))
    return rates


def exact_match(est: np.ndarray, cmd: np.ndarray) -> dict:
    """Per-interval exact match of the 8 flags, its chance level (independent estimates with the same marginal
    distribution of flag sets) and Cohen's kappa."""
    if len(est) == 0:
        return {"exact_match": None, "exact_match_chance": None, "kappa": None}
    exact = float((est == cmd).all(1).mean())
    keys_e, keys_c = [tuple(row) for row in est], [tuple(row) for row in cmd]
    chance = sum(keys_e.count(k) * keys_c.count(k) for k in set(keys_c)) / len(est) ** 2
    kappa = None if chance >= 1 else (exact - chance) / (1 - chance)
    return {"exact_match": exact, "exact_match_chance": float(chance), "kappa": kappa}


def magnitude_scores(est_axes: np.ndarray, cmd_axes: np.ndarray, cmd: np.ndarray) -> dict:
    """Per axis: Pearson r of commanded vs estimated signed amounts over all intervals, and the gain (least-squares
    slope through 0 where commanded); per action: r over the intervals that commanded it."""
    axes = {}
    for k, axis in enumerate(AXES):
        moving = cmd_axes[:, k] != 0
        commanded = cmd_axes[moving, k]  # (M,) the intervals that command this axis
        gain = _ratio(float(est_axes[moving, k] @ commanded), float(commanded @ commanded))
        axes[axis] = {"pearson": _pearson(cmd_axes[:, k], est_axes[:, k]), "gain": gain, "intervals": len(cmd_axes)}
    actions = {}
    for axis_index, axis in enumerate(AXES):
        for sign, name in zip((1.0, -1.0), AXIS_ACTIONS[axis]):
            rows = cmd[:, ACTION_NAMES.index(name)]
            actions[name] = _pearson(sign * cmd_axes[rows, axis_index], sign * est_axes[rows, axis_index])
    return {"axes": axes, "per_action": actions}


def balanced_accuracy(est: np.ndarray, cmd: np.ndarray):
    """The headline from ``(N, 8)`` bool flags: mean balanced accuracy over the actions where it is defined."""
    tp, positives = (est & cmd).sum(0), cmd.sum(0)  # (8,) each
    tn, negatives = (~est & ~cmd).sum(0), (~cmd).sum(0)
    defined = (positives > 0) & (negatives > 0)
    if not defined.any():
        return None
    return float((0.5 * (tp[defined] / positives[defined] + tn[defined] / negatives[defined])).mean())


def chance_test(est: np.ndarray, cmd: np.ndarray, accuracy, permutations: int = PERMUTATIONS) -> dict:
    """Permutation test of the headline: estimates shuffled across intervals (so unrelated to the commands)
    give the null distribution; p_value = share of shuffles scoring at least ``accuracy``."""
    if accuracy is None:
        return {"null_mean": None, "null_p95": None, "p_value": None}
    rng = np.random.default_rng(0)  # fixed: the report is deterministic
    null = np.array([balanced_accuracy(est[rng.permutation(len(est))], cmd) for _ in range(permutations)])
    return {"null_mean": float(null.mean()), "null_p95": float(np.percentile(null, 95)),
            "p_value": float(((null >= accuracy - 1e-12).sum() + 1) / (permutations + 1))}


def score_intervals(estimated, commanded, motion: dict | None = None) -> dict:
    """Metrics of estimated vs commanded ``(N, 2, 8)`` actions (one video or many concatenated).

    Returns accuracy (headline), per_action, unscored_actions, chance (permutation test), exact_match,
    exact_match_chance, kappa, confusion, confusion_rates, magnitude (None without ``motion``, the
    ``estimate_motion`` output of the same N intervals) and intervals.
    """
    est_actions, cmd_actions = check_actions(estimated, "estimated"), check_actions(commanded, "commanded")
    if est_actions.shape != cmd_actions.shape:
        raise ValueError(f"estimated {est_actions.shape} and commanded {cmd_actions.shape} differ in shape")
    est, cmd = active_flags(est_actions), active_flags(cmd_actions)  # (N, 8) each
    per_action = per_action_scores(est, cmd)
    accuracy = balanced_accuracy(est, cmd)
    matrix = confusion_matrix(est, cmd)
    magnitude = None
    if motion is not None:
        magnitude = magnitude_scores(motion_axes(motion), commanded_axes(cmd_actions), cmd)
        for name, value in magnitude["per_action"].items():
            per_action[name]["magnitude_pearson"] = value
    return {"accuracy": accuracy, "per_action": per_action, "chance": chance_test(est, cmd, accuracy),
            "unscored_actions": [n for n, s in per_action.items() if s["balanced_accuracy"] is None],
            **exact_match(est, cmd), "confusion": {"labels": list(CONFUSION_LABELS), "counts": matrix.tolist()},
            "confusion_rates": confusion_rates(matrix, cmd), "magnitude": magnitude, "intervals": len(est)}


def _aligned(steps_video: int, actions: np.ndarray) -> tuple[int, str | None]:
    steps = min(steps_video, len(actions))
    if steps < 1:
        raise ValueError(f"a video of {steps_video} intervals cannot be scored (needs >= {FRAMES_PER_LATENT + 1} "
                         "frames)")
    note = None if steps_video == len(actions) else (
        f"scored the first {steps} intervals: the video has {steps_video}, the actions {len(actions)}")
    return steps, note


def score_motion(motion: dict, commanded, settings: FlowSettings | None = None) -> dict:
    """``score_intervals`` of an ``estimate_motion`` result against commanded actions (overlap only), plus
    estimated (T,2,8), motion, steps and note (why fewer intervals were scored, or None)."""
    actions = check_actions(commanded, "commanded")
    steps, note = _aligned(len(motion["forward"]), actions)
    motion = {key: value[:steps] for key, value in motion.items()}
    estimated = motion_to_actions(motion, settings)
    return {**score_intervals(estimated, actions[:steps], motion), "estimated": estimated, "motion": motion,
            "steps": steps, "note": note}


def score_video(frames, commanded, settings: FlowSettings | None = None) -> dict:
    """Score one video (``(N, H, W, 3)`` uint8 / [0, 1] float frames or PIL images) against its commanded
    ``(T, 2, 8)`` actions: ``score_intervals``' keys plus estimated, motion, steps and note.

    One clip rarely defines the headline (an action held throughout has no interval without it, so its balanced
    accuracy and then ``accuracy`` can be None): pool clips with ``evaluate_clips`` or ``score_intervals``.
    """
    return score_motion(estimate_motion(frames, settings), commanded, settings)


def evaluate_clips(clips: list[dict], settings: FlowSettings | None = None, label: str = "", source: str = "",
                   progress: bool = False) -> dict:
    """Score every clip (``frames`` array or ``video`` path, plus ``actions``) and pool the intervals: an entry
    ``{label, source, metrics, clips: [{name, steps, note, commanded (T,4), estimated (T,4), ...}]}``."""
    settings = settings or FlowSettings()
    iterator = clips
    if progress:
        from tqdm import tqdm
        iterator = tqdm(clips, desc=f"scoring {label}".strip(), unit="clip", file=sys.stderr)
    results, pooled = [], {"estimated": [], "commanded": [], "motion": []}
    for clip in iterator:
        boundaries = read_video(clip["video"], settings.stride) if clip.get("frames") is None else \
            np.asarray(clip["frames"])[::settings.stride]
        scored = score_motion(boundary_motion(boundaries, settings), clip["actions"], settings)
        commanded = check_actions(clip["actions"])[:scored["steps"]]
        pooled["estimated"].append(scored["estimated"])
        pooled["commanded"].append(commanded)
        pooled["motion"].append(scored["motion"])
        results.append({"name": clip["name"], "video": clip.get("video"), "steps": scored["steps"],
                        "note": scored["note"], "accuracy": scored["accuracy"], "exact_match": scored["exact_match"],
                        "commanded": commanded_axes(commanded).round(6).tolist(),
                        "estimated": motion_axes(scored["motion"]).round(6).tolist(),
                        "commanded_flags": active_flags(commanded).astype(int).tolist(),
                        "estimated_flags": active_flags(scored["estimated"].astype(np.float64)).astype(int).tolist(),
                        "unreadable_intervals": int((~scored["motion"]["readable"]).sum())})
    if not results:
        raise ValueError(f"{label or 'entry'}: no clips to score")
    motion = {key: np.concatenate([m[key] for m in pooled["motion"]]) for key in pooled["motion"][0]}
    metrics = score_intervals(np.concatenate(pooled["estimated"]), np.concatenate(pooled["commanded"]), motion)
    return {"label": label, "source": source, "metrics": metrics, "clips": results}


def near_chance(metrics: dict) -> bool:
    """True when the headline cannot be told apart from chance (permutation p-value > CHANCE_P)."""
    p_value = metrics["chance"]["p_value"]
    return p_value is None or p_value > CHANCE_P
