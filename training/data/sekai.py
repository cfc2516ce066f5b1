"""Sekai camera trajectories -> the seed's training CSV.

    python -m training.prepare_sekai --videos DIR --poses DIR --captions CSV --out DIR
        [--frames 81 --fps 24 --stride N --heading_frame --raw_captions --height H --width W]

Inputs: ``{ytid}_{startFrame}_{endFrame}.mp4`` (source fps read from the video, Sekai: 30), ``{same stem}.npz`` with
``extrinsic`` (N,4,4) camera-to-world (OpenCV axes, one per video frame), captions CSV (``videoFile``, ``caption``).
Each video is cut into windows of ``--frames`` clip frames at ``--fps``: clip frame i is source frame
s + round(r i), r = source fps / fps, and windows start every ``--stride`` source frames (default: one window span,
no overlap). Actions come from ``training.data.pose_actions`` (units of ``models.action_format``); the translation
threshold uses the median displacement of the whole video at spacing 4r, the heading frame's up is estimated from
the whole video.
Outputs in --out: videos/{stem}_{start:06d}.mp4 (start = first source frame), metadata.csv (video, prompt, action),
metadata.json (conventions incl.
``heading_frame``: use the same at inference), report.json + summary.md (every video and window, accepted or
rejected with a reason), action_stats.json + action_hist.png.
Rejection codes: missing_pose_file, bad_pose_file, nan_poses, poses_out_of_range, unreadable_video,
pose_count_mismatch, too_short, tilt_near_vertical, error (whole video); implausible_motion, vertical_motion, roll,
static, video_ended (one window);
no_windows (a video whose windows were all rejected). A bad video never stops the batch.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.action_format import (
    ACTION_NAMES,
    FRAMES_PER_LATENT,
    ROTATION_UNIT,
    TRANSLATION_UNIT,
    num_actions_for_frames,
)
from models.media import Mp4Writer, fit_image, iter_frames, probe_video
from training.data import pose_actions as pa
from training.data.action_stats import write_action_stats
from training.data.captions import clean_caption

POSE_LIMIT = 1.0 + 1e-3  # Sekai translations are normalised to +-1; a little slack for float rounding
VERTICAL_SHARE_MAX = 0.5  # reject a window when more of its path is vertical than this (no action channel)
# An interval moving implausibly far for its clip (a 180-degree Euler flip of a pose estimator, a tracking jump) is
# no flight: its window is rejected. Limits per clip: RELATIVE_LIMIT x the clip's 95th percentile (a floor of
# MOTION_FLOOR x the action threshold keeps a near-static clip from rejecting its own small moves), never above
# the absolute caps (a drone does not turn 45 degrees or cross a quarter of the scene in 4 frames).
RELATIVE_LIMIT = 8.0
MOTION_FLOOR = 10.0
ROTATION_CAP_DEG = 45.0  # per 4-frame interval
TRANSLATION_CAP = 0.25  # per 4-frame interval, Sekai-normalised units (poses stay within +-1)
TILT_MAX_DEG = 70.0  # --heading_frame: a camera this close to straight down has no usable heading
ROLL_SHARE_MAX = 0.5  # ... or when roll is more than this share of all rotation


@dataclass
class Settings:
    frames: int = 81
    fps: float = 24.0
    stride: int | None = None  # source frames between window starts; None = one window span
    heading_frame: bool = False
    raw_captions: bool = False
    height: int | None = None  # output size (centre crop to aspect, then resize); None keeps the source size
    width: int | None = None

    def validate(self) -> "Settings":
        _check_frames(self.frames)
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1 source frame, got {self.stride}")
        if (self.height is None) != (self.width is None):
            raise ValueError("height and width must be given together")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 16 or value % 2):
                raise ValueError(f"{name} must be an even integer >= 16, got {value}")
        return self


def _check_frames(frames) -> int:
    try:
        steps = num_actions_for_frames(frames)
    except ValueError as error:
        raise ValueError(f"frames: {error}") from None
    if steps < 1:
        raise ValueError(f"frames: need at least 5 frames (one action interval), got {frames}")
    return steps


class Reject(Exception):
    """A video-level rejection with a code from the module docstring."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


def load_captions(path) -> dict[str, str]:
    """videoFile -> caption, keyed by file name and by stem (captions may list paths or bare names)."""
    captions = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"videoFile", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"captions: {path} lacks column(s) {sorted(missing)}")
        for row in reader:
            name = Path(row["videoFile"].strip()).name
            captions[name] = captions[Path(name).stem] = row["caption"] or ""
    return captions


def load_poses(path: Path) -> np.ndarray:
    """``extrinsic`` (N, 4, 4) float64 of a pose file, or Reject with the reason."""
    if not path.is_file():
        raise Reject("missing_pose_file", f"no pose file {path.name}")
    try:
        with np.load(path) as data:
            poses = np.asarray(data["extrinsic"], dtype=np.float64)
    except Exception as error:  # a corrupt npz raises many types; all mean the same to the report
        raise Reject("bad_pose_file", f"cannot read {path.name}: {type(error).__name__}: {error}") from None
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) < 2:
        raise Reject("bad_pose_file", f"extrinsic has shape {poses.shape}, expected (N, 4, 4)")
    if not np.isfinite(poses).all():
        bad = int((~np.isfinite(poses)).any(axis=(1, 2)).sum())
        raise Reject("nan_poses", f"{bad} of {len(poses)} poses contain NaN/Inf")
    extent = float(np.abs(poses[:, :3, 3]).max())
    if extent > POSE_LIMIT:
        raise Reject("poses_out_of_range", f"translations reach {extent:.3g}, outside Sekai's +-1 normalisation")
    return poses


def window_starts(num_poses: int, span: int, stride: int) -> list[int]:
    return list(range(0, num_poses - span + 1, stride))


def interval_sizes(motion: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per interval (T,): the rotation (degrees) and the translation (units) of ``measure_motion``'s output."""
    rotation = np.sqrt(motion["yaw"] ** 2 + motion["pitch"] ** 2 + motion["roll"] ** 2)
    translation = np.sqrt(motion["forward"] ** 2 + motion["right"] ** 2 + motion["down"] ** 2)
    return rotation, translation


def motion_limits(motion: dict[str, np.ndarray], tau_t: float, tau_r: float) -> dict[str, float]:
    """The clip's plausible rotation and translation per interval (module constants), from all its intervals."""
    rotation, translation = interval_sizes(motion)
    return {"rotation_limit_deg": float(min(ROTATION_CAP_DEG, max(RELATIVE_LIMIT * np.percentile(rotation, 95),
                                                                  MOTION_FLOOR * tau_r))),
            "translation_limit": float(min(TRANSLATION_CAP, max(RELATIVE_LIMIT * np.percentile(translation, 95),
                                                                MOTION_FLOOR * tau_t)))}


def check_window(motion: dict[str, np.ndarray], actions: np.ndarray, tau_t: float, tau_r: float,
                 limits: dict | None = None):
    """(code, detail) of why a window cannot be trained on, or None."""
    if limits is not None:
        rotation, translation = interval_sizes(motion)
        for name, sizes, limit, unit in (("rotation", rotation, limits["rotation_limit_deg"], " degrees"),
                                         ("translation", translation, limits["translation_limit"], "")):
            if (sizes > limit).any():
                k = int(np.argmax(sizes))
                return "implausible_motion", (f"interval {k} has a {name} of {sizes[k]:.3g}{unit}, over the clip's "
                                              f"limit of {limit:.3g}{unit} (a pose jump, not a flight)")
    horizontal = np.hypot(motion["forward"], motion["right"])  # (T,)
    path = np.sqrt(horizontal ** 2 + motion["down"] ** 2).sum()
    vertical = np.abs(motion["down"]).sum()
    if path > len(horizontal) * tau_t and vertical > VERTICAL_SHARE_MAX * path:
        return "vertical_motion", f"{vertical / path:.0%} of the path is vertical (no action channel)"
    roll = np.abs(motion["roll"]).sum()
    turning = roll + np.abs(motion["yaw"]).sum() + np.abs(motion["pitch"]).sum()
    if roll > 0.5 * len(horizontal) * tau_r and roll > ROLL_SHARE_MAX * turning:
        return "roll", (f"roll is {roll / turning:.0%} of all rotation (no action channel; a tilted camera's yaw "
                        "reads as roll in the camera frame, try --heading_frame)")
    if not actions[:, 0].any():
        return "static", "no action above the thresholds in any interval"
    return None


def _resize(frame: np.ndarray, settings: Settings) -> np.ndarray:
    """The output size: centre crop + resize (``models.media.fit_image``), or the source cut to even sides."""
    if settings.height is None:
        return frame[:frame.shape[0] // 2 * 2, :frame.shape[1] // 2 * 2]
    return fit_image(frame, settings.width, settings.height)


def plan_video(poses: np.ndarray, source_fps: float, settings: Settings) -> tuple[list[dict], dict]:
    """Windows (start, source frame indices, actions or rejection) of one video, and video-level facts."""
    step = source_fps / settings.fps  # source frames per clip frame
    num_steps = num_actions_for_frames(settings.frames)
    span = int(round(step * (settings.frames - 1))) + 1
    starts = window_starts(len(poses), span, settings.stride or span)
    if not starts:
        raise Reject("too_short", f"{len(poses)} frames < {span} needed for {settings.frames} frames at "
                                  f"{settings.fps:g} fps")
    spacing = int(round(FRAMES_PER_LATENT * step))
    median = pa.median_step(poses, spacing)
    tau_t, tau_r = pa.translation_threshold(median, step), pa.rotation_threshold(step)
    up, up_source, spread = pa.estimate_up(poses) if settings.heading_frame else (None, "camera", None)
    if up is not None and pa.mean_tilt_deg(poses, up) > TILT_MAX_DEG:
        raise Reject("tilt_near_vertical", f"--heading_frame: the cameras look {pa.mean_tilt_deg(poses, up):.0f} "
                                           f"degrees down (over {TILT_MAX_DEG:g}): a camera rolling about its optical "
                                           "axis reads as a downward camera yawing; convert without --heading_frame")
    every = np.arange(0, len(poses), spacing)  # every interval of the clip: its own distribution of motion
    limits = motion_limits(pa.measure_motion(poses[every], settings.heading_frame, up), tau_t, tau_r) \
        if len(every) > 1 else None
    windows = []
    for start in starts:
        boundaries = start + pa.latent_indices(num_steps, step)
        motion = pa.normalise_spacing(pa.measure_motion(poses[boundaries], settings.heading_frame, up),
                                      num_steps, step)
        actions = pa.motion_to_actions(motion, tau_t, tau_r)
        problem = check_window(motion, actions, tau_t, tau_r, limits)
        windows.append({"start": start, "frames": (start + np.round(step * np.arange(settings.frames))).astype(int),
                        "actions": actions, "status": "rejected" if problem else "ok",
                        "code": problem[0] if problem else None, "detail": problem[1] if problem else None})
    facts = {"step": step, "median_step": median, "tau_t": tau_t, "tau_r": tau_r, "up_source": up_source,
             "up": None if up is None else [round(float(v), 5) for v in up], "up_spread": spread,
             "tilt_deg": None if up is None else round(pa.mean_tilt_deg(poses, up), 2), **(limits or {})}
    return windows, facts


def write_windows(video: Path, windows: list[dict], out: Path, stem: str, fps: float, settings: Settings) -> None:
    """Stream the video once and write every accepted window; a window the video ends before is rejected."""
    todo = [w for w in windows if w["status"] == "ok"]
    wanted: dict[int, list[dict]] = {}  # source frame -> windows that use it, once per use
    for window in todo:
        window["output"] = f"videos/{stem}_{window['start']:06d}.mp4"
        window["writer"] = Mp4Writer(out / window["output"], fps)
        for index in window["frames"]:
            wanted.setdefault(int(index), []).append(window)
    try:
        for index, frame in iter_frames(video, set(wanted)):
            frame = _resize(frame, settings)
            for window in wanted[index]:  # a frame may repeat when the source fps is below the clip fps
                window["writer"].write(frame)
    finally:
        for window in todo:
            writer = window.pop("writer")
            writer.close()
            if writer.count < len(window["frames"]):
                (out / window["output"]).unlink(missing_ok=True)
                window.update(status="rejected", code="video_ended", output=None,
                              detail=f"video decoded only {writer.count} of the window's {len(window['frames'])} "
                                     "frames")


def convert_video(video: Path, pose_dir: Path, captions: dict[str, str], out: Path,
                  settings: Settings) -> tuple[list[dict], dict]:
    """CSV rows and the report entry of one source video; every failure becomes a reported rejection."""
    entry = {"video": video.name, "status": "rejected", "code": None, "detail": None, "windows": [], "warnings": []}
    windows: list[dict] = []
    try:
        poses = load_poses(pose_dir / f"{video.stem}.npz")
        try:
            info = probe_video(video)
        except ValueError as error:
            raise Reject("unreadable_video", str(error)) from None
        entry.update(poses=len(poses), frames=info["frames"], source_fps=info["fps"])
        if len(poses) != info["frames"]:
            raise Reject("pose_count_mismatch", f"{len(poses)} poses for {info['frames']} video frames")
        windows, facts = plan_video(poses, info["fps"], settings)
        entry.update(facts)
        write_windows(video, windows, out, video.stem, settings.fps, settings)
    except Reject as reject:
        entry.update(code=reject.code, detail=reject.detail)
        return [], entry
    except Exception as error:  # keep the batch going; the report names the unexpected failure
        entry.update(code="error", detail=f"{type(error).__name__}: {error}")
        for window in windows:  # no CSV row will point at clips already written for this video
            if window.get("output"):
                (out / window["output"]).unlink(missing_ok=True)
        return [], entry
    caption = captions.get(video.name, captions.get(video.stem))
    if caption is None:
        entry["warnings"].append("no caption; prompt left empty")
    prompt = (caption or "") if settings.raw_captions else clean_caption(caption or "")
    rows = []
    for window in windows:
        entry["windows"].append({key: window.get(key) for key in ("start", "status", "code", "detail", "output")})
        if window["status"] == "ok":
            action = np.round(window["actions"].astype(np.float64), 6).tolist()
            rows.append({"video": window["output"], "prompt": prompt,
                         "action": json.dumps(action, separators=(",", ":"))})
    if rows:
        entry.update(status="ok")
    else:
        entry.update(code="no_windows", detail="every window was rejected")
    return rows, entry


def convert_dataset(videos, poses, captions, out, settings: Settings | None = None, progress: bool = False) -> dict:
    """Convert every ``*.mp4`` in ``videos``; writes all outputs (module docstring) and returns the report."""
    settings = (settings or Settings()).validate()
    videos, poses, out = Path(videos), Path(poses), Path(out)
    for name, path in (("videos", videos), ("poses", poses)):
        if not path.is_dir():
            raise ValueError(f"{name}: {path} is not a directory")
    if not Path(captions).is_file():
        raise ValueError(f"captions: {captions} is not a file")
    caption_map = load_captions(captions)
    sources = sorted(videos.glob("*.mp4"))
    if not sources:
        raise ValueError(f"videos: no .mp4 files in {videos}")
    out.mkdir(parents=True, exist_ok=True)
    iterator = sources
    if progress:
        from tqdm import tqdm
        iterator = tqdm(sources, desc="sekai videos", unit="video")
    rows, entries = [], []
    for video in iterator:
        video_rows, entry = convert_video(video, poses, caption_map, out, settings)
        rows += video_rows
        entries.append(entry)
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "action"])
        writer.writeheader()
        writer.writerows(rows)
    conventions = {"source": "training.prepare_sekai", **asdict(settings), "action_names": list(ACTION_NAMES),
                   "translation_unit": TRANSLATION_UNIT, "rotation_unit": ROTATION_UNIT,
                   "motion_frame": "heading" if settings.heading_frame else "camera",
                   "thresholds": {"cone_cos": pa.CONE_COS, "translation_median_fraction":
                                  pa.TRANSLATION_MEDIAN_FRACTION, "translation_floor_per_frame":
                                  pa.TRANSLATION_FLOOR_PER_FRAME, "rotation_deg_per_frame": pa.ROTATION_DEG_PER_FRAME}}
    (out / "metadata.json").write_text(json.dumps(conventions, indent=2))
    report = {"settings": conventions, "totals": _totals(entries), "videos": entries}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(summarise(report))
    if rows:
        write_action_stats([json.loads(row["action"]) for row in rows], out)
    return report


def _totals(entries: list[dict]) -> dict:
    windows = [w for e in entries for w in e["windows"]]
    reasons: dict[str, int] = {}
    for code in [e["code"] for e in entries if e["status"] != "ok"] + [w["code"] for w in windows if w["code"]]:
        reasons[code] = reasons.get(code, 0) + 1
    return {"videos": len(entries), "videos_ok": sum(e["status"] == "ok" for e in entries),
            "videos_rejected": sum(e["status"] != "ok" for e in entries), "windows": len(windows),
            "windows_ok": sum(w["status"] == "ok" for w in windows),
            "windows_rejected": sum(w["status"] != "ok" for w in windows), "reasons": reasons}


def summarise(report: dict) -> str:
    """A human-readable summary.md: totals, reasons, and every rejected video and window."""
    totals = report["totals"]
    lines = ["# Sekai conversion summary", "",
             f"- videos: {totals['videos']} ({totals['videos_ok']} used, {totals['videos_rejected']} rejected)",
             f"- clips: {totals['windows_ok']} written, {totals['windows_rejected']} windows rejected",
             f"- motion frame: {report['settings']['motion_frame']}", "", "## Rejections by reason", "",
             "| reason | count |", "| --- | --- |"]
    lines += [f"| {code} | {count} |" for code, count in sorted(totals["reasons"].items())] or ["| none | 0 |"]
    lines += ["", "## Rejected", ""]
    for entry in report["videos"]:
        if entry["status"] != "ok":
            lines.append(f"- `{entry['video']}`: **{entry['code']}** {entry['detail']}")
        for window in entry["windows"]:
            if window["status"] != "ok":
                lines.append(f"- `{entry['video']}` window at source frame {window['start']}: "
                             f"**{window['code']}** {window['detail']}")
        for warning in entry["warnings"]:
            lines.append(f"- `{entry['video']}` warning: {warning}")
    return "\n".join(lines) + "\n"
