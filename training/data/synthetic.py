"""Procedural drone-flight dataset with known actions: ``python -m training.synthetic --out DIR --clips N``.

A camera flies over a textured ground with pillars, boxes and trees (``training.data.scene``), driven by a
random but known action sequence, rendered to mp4 and written in the seed's CSV format plus Sekai-style poses.

Action semantics (``training.prepare_sekai`` measures the same, so converting these poses recovers the actions):
    Forward/Back   translate along the drone's HORIZONTAL heading (the camera's forward axis projected on the
                   ground plane), so a pitched or tilted camera still flies level, like a drone with a gimbal.
    Left/Right     translate along the camera x axis (always horizontal: the drone never rolls).
    Yaw Left/Right rotate about world up; Yaw Left turns left.
    Pitch Up/Down  rotate about the camera x axis; Pitch Up looks up. Commanded pitch stays within
                   +-MAX_PITCH_DEG (``clamp_pitch``); ``tilt_deg`` adds a fixed downward mount tilt on top.
    No action changes altitude or roll (Sekai has no channel for them).
Units (``models.action_format``): translation in world units per 4-frame interval (0.005-0.015, Sekai's median is
~0.009), rotation in degrees per interval (0.4-2). Action t is applied in equal quarters over frames 4t+1..4t+4.
World frame: x east, y down, z north, ground at y = 0, drone ALTITUDE above it; a 20-interval flight moves at most
0.3, so every pose translation stays within +-1 like Sekai's normalised poses.
Outputs: DIR/videos/clip_00000.mp4, DIR/poses/clip_00000.npz (``extrinsic`` (N,4,4) camera-to-world with OpenCV
camera axes, ``intrinsic`` 3x3 normalised by width/height), DIR/metadata.csv (video, prompt, action JSON (T,2,8)),
DIR/metadata.json (conventions) and DIR/action_stats.json.
Speed (numpy, 2 CPU cores): ~0.4 s per 128x128x33 clip, ~35 s per 480x832x81 clip; deterministic per seed.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.action_format import (
    ACTION_NAMES,
    FRAMES_PER_LATENT,
    NUM_ACTIONS,
    ROTATION_UNIT,
    TRANSLATION_UNIT,
    num_actions_for_frames,
)
from models.media import write_mp4
from training.data.action_stats import write_action_stats
from training.data.scene import Scene, intrinsics, make_scene, render_frame

ALTITUDE = 0.03  # drone height above the ground in world units
MAX_PITCH_DEG = 30.0
TRANSLATION_RANGE = (0.005, 0.015)  # per 4-frame interval
ROTATION_RANGE = (0.4, 2.0)  # degrees per 4-frame interval
MAX_SEGMENT = 6  # a random action is held for 1..MAX_SEGMENT intervals
INDEX = {name: i for i, name in enumerate(ACTION_NAMES)}
OPPOSITE = {"Forward": "Back", "Back": "Forward", "Left": "Right", "Right": "Left", "Yaw Left": "Yaw Right",
            "Yaw Right": "Yaw Left", "Pitch Up": "Pitch Down", "Pitch Down": "Pitch Up"}
TRANSLATIONS = ("Forward", "Back", "Left", "Right")
# Segment kinds and their weights. Translation combos pair one forward/back with one sideways action at similar
# magnitudes (diagonal flight), because the converter's 60-degree cone cannot see a small side component.
SEGMENTS = (("hover", 0.10), ("single", 0.50), ("forward+yaw", 0.12), ("forward+pitch", 0.08),
            ("move+yaw", 0.06), ("diagonal", 0.07), ("yaw+pitch", 0.04), ("forward+yaw+pitch", 0.03))


@dataclass(frozen=True)
class DroneState:
    """Where the drone is: ground position (x, z), ALTITUDE, heading (0 = north, + = right), commanded pitch."""
    x: float = 0.0
    z: float = 0.0
    altitude: float = ALTITUDE
    heading_deg: float = 0.0
    pitch_deg: float = 0.0  # + looks up; the camera's elevation is pitch_deg - tilt_deg
    tilt_deg: float = 0.0  # fixed downward mount tilt

    def c2w(self) -> np.ndarray:
        """Camera-to-world 4x4, OpenCV camera axes in the y-down world: R = R_y(heading) @ R_x(pitch - tilt)."""
        yaw, pitch = np.radians(self.heading_deg), np.radians(self.pitch_deg - self.tilt_deg)
        r_yaw = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        r_pitch = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
        pose = np.eye(4)
        pose[:3, :3] = r_yaw @ r_pitch
        pose[:3, 3] = (self.x, -self.altitude, self.z)
        return pose

    @classmethod
    def from_c2w(cls, c2w, tilt_deg: float = 0.0) -> "DroneState":
        """Inverse of ``c2w`` for a roll-free pose in this module's world frame (e.g. the last pose of a flight)."""
        c2w = np.asarray(c2w, dtype=np.float64)
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise ValueError(f"c2w: expected a finite 4x4 matrix, got shape {c2w.shape}")
        forward = c2w[:3, 2]
        heading = np.degrees(np.arctan2(forward[0], forward[2]))
        elevation = np.degrees(np.arctan2(-forward[1], np.hypot(forward[0], forward[2])))
        return cls(float(c2w[0, 3]), float(c2w[2, 3]), float(-c2w[1, 3]), float(heading),
                   float(elevation + tilt_deg), float(tilt_deg))


def _check_actions(actions) -> np.ndarray:
    actions = np.asarray(actions.detach().cpu() if hasattr(actions, "detach") else actions, dtype=np.float64)
    if actions.ndim != 3 or actions.shape[1:] != (2, NUM_ACTIONS) or len(actions) == 0:
        raise ValueError(f"actions: expected shape (T, 2, {NUM_ACTIONS}) with T >= 1, got {actions.shape}")
    if not np.isfinite(actions).all() or (actions[:, 1] < 0).any():
        raise ValueError("actions: magnitudes must be finite and >= 0")
    return actions


def _net(actions: np.ndarray, positive: str, negative: str) -> np.ndarray:
    """Signed per-interval amount (T,) of an opposite pair; a flag of 0 disables its magnitude."""
    amount = actions[:, 1] * (actions[:, 0] > 0)  # (T, 8)
    return amount[:, INDEX[positive]] - amount[:, INDEX[negative]]


def clamp_pitch(actions, start_pitch_deg: float = 0.0, max_pitch_deg: float = MAX_PITCH_DEG) -> np.ndarray:
    """Shrink pitch magnitudes so the accumulated pitch stays within +-max_pitch_deg (flag 0 when nothing is left).

    This is what ``fly`` executes; the returned (T,2,8) is therefore the action sequence actually flown.
    """
    actions = _check_actions(actions).copy()
    pitch = float(start_pitch_deg)
    for step, wanted in enumerate(_net(actions, "Pitch Up", "Pitch Down")):
        target = pitch + wanted
        # Only a step that crosses the limit changes: the rest stay bit-identical to what was commanded.
        limited = float(np.clip(target, -max_pitch_deg, max_pitch_deg))
        done = wanted if abs(target) <= max_pitch_deg else limited - pitch
        pitch += done
        if done == wanted:
            continue
        for name, amount in (("Pitch Up", max(done, 0.0)), ("Pitch Down", max(-done, 0.0))):
            actions[step, 1, INDEX[name]] = amount if amount > 1e-9 else 0.0
            actions[step, 0, INDEX[name]] = float(amount > 1e-9)
    return actions


def fly(actions, start: DroneState | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fly a (T,2,8) action sequence: camera-to-world poses ``(4T+1, 4, 4)`` and the actions flown (pitch-clamped)."""
    start = start or DroneState()
    actions = clamp_pitch(actions, start.pitch_deg)
    quarter = 1.0 / FRAMES_PER_LATENT
    forward, right = _net(actions, "Forward", "Back") * quarter, _net(actions, "Right", "Left") * quarter  # (T,)
    yaw, pitch = _net(actions, "Yaw Right", "Yaw Left") * quarter, _net(actions, "Pitch Up", "Pitch Down") * quarter
    state, poses = start, [start.c2w()]
    for step in range(len(actions)):
        for _ in range(FRAMES_PER_LATENT):
            # Translate along the heading halfway through this frame's turn, so a turning interval's chord points
            # along its mean heading (symmetric in the two yaw directions).
            mid = np.radians(state.heading_deg + 0.5 * yaw[step])
            dx = forward[step] * np.sin(mid) + right[step] * np.cos(mid)
            dz = forward[step] * np.cos(mid) - right[step] * np.sin(mid)
            state = replace(state, x=state.x + dx, z=state.z + dz, heading_deg=state.heading_deg + yaw[step],
                            pitch_deg=state.pitch_deg + pitch[step])
            poses.append(state.c2w())
    return np.stack(poses), actions


def random_actions(num_steps: int, rng: np.random.Generator, max_pitch_deg: float = MAX_PITCH_DEG,
                   start_pitch_deg: float = 0.0, speed: float = 1.0, move_speed: float | None = None) -> np.ndarray:
    """A random (T,2,8) flight: segments of 1..MAX_SEGMENT intervals of hovers, single actions and combos.
    ``speed`` multiplies TRANSLATION_RANGE and ROTATION_RANGE (the toy world flies faster than Sekai so that
    motion is visible at 128x128; see docs/toyworld.md); ``move_speed``, when given, multiplies
    TRANSLATION_RANGE instead (translations then scale apart from turns).

    A pitch that would leave +-max_pitch_deg is reversed for the rest of its segment instead of shrunk, so every
    flown magnitude stays in ROTATION_RANGE (a tiny clipped pitch would be invisible to a converter).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    for name, value in (("speed", speed), ("move_speed", speed if move_speed is None else move_speed)):
        if not (np.isfinite(value) and 0 < value <= 10):
            raise ValueError(f"{name} must be in (0, 10], got {value}")
    actions = np.zeros((num_steps, 2, NUM_ACTIONS), dtype=np.float64)
    kinds, weights = zip(*SEGMENTS)
    step, pitch = 0, float(start_pitch_deg)
    while step < num_steps:
        kind = kinds[rng.choice(len(kinds), p=np.asarray(weights) / sum(weights))]
        magnitudes = _segment(rng, kind, speed, speed if move_speed is None else move_speed)
        for _ in range(int(rng.integers(1, MAX_SEGMENT + 1))):
            if step == num_steps:
                break
            name = next((n for n in ("Pitch Up", "Pitch Down") if n in magnitudes), None)
            if name is not None:
                sign = 1.0 if name == "Pitch Up" else -1.0
                if abs(pitch + sign * magnitudes[name]) > max_pitch_deg:
                    magnitudes[OPPOSITE[name]] = magnitudes.pop(name)
                    sign = -sign
                pitch += sign * max(magnitudes.get("Pitch Up", 0.0), magnitudes.get("Pitch Down", 0.0))
            for name, value in magnitudes.items():
                actions[step, :, INDEX[name]] = (1.0, value)
            step += 1
    return actions


def _segment(rng: np.random.Generator, kind: str, speed: float = 1.0, move_speed: float = 1.0) -> dict[str, float]:
    """Magnitudes {action name: value} of one segment kind: turns scaled by ``speed``, translations by
    ``move_speed``."""
    def pick(*names):
        return names[rng.integers(len(names))]

    def move():
        return move_speed * float(rng.uniform(*TRANSLATION_RANGE))

    def turn():
        return speed * float(rng.uniform(*ROTATION_RANGE))

    if kind == "hover":
        return {}
    if kind == "single":
        name = ACTION_NAMES[rng.integers(NUM_ACTIONS)]
        return {name: move() if name in TRANSLATIONS else turn()}
    if kind == "diagonal":
        first = move()
        second = float(np.clip(first * rng.uniform(0.75, 1.33), *(move_speed * np.asarray(TRANSLATION_RANGE))))
        return {pick("Forward", "Back"): first, pick("Left", "Right"): second}
    names = {"forward+yaw": ("Forward", "yaw"), "forward+pitch": ("Forward", "pitch"), "move+yaw": ("move", "yaw"),
             "yaw+pitch": ("yaw", "pitch"), "forward+yaw+pitch": ("Forward", "yaw", "pitch")}[kind]
    out = {}
    for name in names:
        if name == "yaw":
            out[pick("Yaw Left", "Yaw Right")] = turn()
        elif name == "pitch":
            out[pick("Pitch Up", "Pitch Down")] = turn()
        elif name == "move":
            out[pick("Back", "Left", "Right")] = move()
        else:
            out[name] = move()
    return out


def render_flight(actions, start: DroneState | None = None, scene: Scene | int = 0, height: int = 128,
                  width: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a commanded (T,2,8) flight from ``start`` in ``scene`` (a Scene, or a seed: then the path is kept
    clear of objects). Returns frames ``(4T+1, H, W, 3)`` uint8, camera-to-world ``(4T+1, 4, 4)`` and the
    actions flown (pitch-clamped)."""
    _check_size(height, width)
    poses, flown = fly(actions, start)
    if not isinstance(scene, Scene):
        scene = make_scene(int(scene), clear_xz=poses[:, [0, 2], 3])
    frames = np.stack([render_frame(scene, pose, height, width) for pose in poses])
    return frames, poses, flown


def render_clip(actions, height: int, width: int, frames: int, seed: int,
                tilt_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(N, H, W, 3)`` uint8 and camera-to-world ``(N, 4, 4)`` of a flight from the origin heading north
    in the world of ``seed``. ``frames`` must equal 4T+1 for the T actions (pitch is clamped, see ``fly``)."""
    actions = _check_actions(actions)
    if num_actions_for_frames(int(frames)) != len(actions):
        raise ValueError(f"frames: {frames} frames need {num_actions_for_frames(int(frames))} actions, "
                         f"got {len(actions)}")
    video, poses, _ = render_flight(actions, DroneState(tilt_deg=float(tilt_deg)), seed, height, width)
    return video, poses


def _check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value < 16 or value % 2:
            raise ValueError(f"{name} must be an even integer >= 16 (yuv420p mp4), got {value!r}")


def render_random_flight(seed: int, index: int, frames: int, height: int, width: int, speed: float = 1.0,
                         tilt_deg: float = 0.0, move_speed: float | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Flight ``index`` of the dataset of ``seed``: frames ``(N, H, W, 3)`` uint8, camera-to-world ``(N, 4, 4)``,
    the actions flown ``(T, 2, 8)`` and the scene's prompt. An independent random stream per clip, so clips are
    reproducible one by one."""
    rng = np.random.default_rng([seed, index])
    actions = random_actions(num_actions_for_frames(frames), rng, speed=speed, move_speed=move_speed)
    scene_seed = int(rng.integers(2 ** 31))
    start = DroneState(heading_deg=float(rng.uniform(-180.0, 180.0)), tilt_deg=tilt_deg)  # varied sun direction
    poses, flown = fly(actions, start)
    scene = make_scene(scene_seed, clear_xz=poses[:, [0, 2], 3])  # the scene keeps the flight path clear
    video, poses, flown = render_flight(flown, start, scene, height, width)
    return video, poses, flown, scene.prompt


def make_clip(out: Path, index: int, frames: int, height: int, width: int, fps: float, seed: int,
              tilt_deg: float = 0.0) -> dict:
    """Render and write clip ``index`` of the dataset of ``seed``; returns its CSV row."""
    video, poses, flown, prompt = render_random_flight(seed, index, frames, height, width, tilt_deg=tilt_deg)
    name = f"clip_{index:05d}"
    write_mp4(out / "videos" / f"{name}.mp4", video, fps)
    (out / "poses").mkdir(parents=True, exist_ok=True)
    np.savez(out / "poses" / f"{name}.npz", extrinsic=poses.astype(np.float32),
             intrinsic=intrinsics(height, width).astype(np.float32))
    action = np.round(flown, 6).tolist()
    return {"video": f"videos/{name}.mp4", "prompt": prompt, "action": json.dumps(action, separators=(",", ":"))}


def make_dataset(out, clips: int, frames: int = 81, height: int = 480, width: int = 832, fps: float = 24.0,
                 seed: int = 0, tilt_deg: float = 0.0, progress: bool = False) -> list[dict]:
    """Write ``clips`` synthetic clips, metadata.csv, metadata.json and action_stats.json under ``out``."""
    if not isinstance(clips, int) or clips < 1:
        raise ValueError(f"clips must be a positive integer, got {clips!r}")
    try:
        if num_actions_for_frames(frames) < 1:
            raise ValueError(f"need at least 5 frames (one action interval), got {frames}")
    except ValueError as error:
        raise ValueError(f"frames: {error}") from None
    _check_size(height, width)
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not np.isfinite(tilt_deg) or abs(tilt_deg) > 60:  # with +-30 pitch the camera never passes vertical
        raise ValueError(f"tilt_deg must be within +-60 degrees, got {tilt_deg}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    indices = range(clips)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="synthetic clips", unit="clip")
    rows = [make_clip(out, i, frames, height, width, fps, seed, tilt_deg) for i in indices]
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "action"])
        writer.writeheader()
        writer.writerows(rows)
    info = {"source": "training.synthetic", "clips": clips, "frames": frames, "height": height, "width": width,
            "fps": fps, "seed": seed, "tilt_deg": tilt_deg, "action_names": list(ACTION_NAMES),
            "translation_unit": TRANSLATION_UNIT, "rotation_unit": ROTATION_UNIT, "motion_frame": "heading",
            "world_frame": "x east, y down, z north; ground y=0; camera axes OpenCV"}
    (out / "metadata.json").write_text(json.dumps(info, indent=2))
    write_action_stats([json.loads(row["action"]) for row in rows], out)
    return rows


def held_out_start(scene_seed: int) -> DroneState:
    """The start pose of the held-out synthetic world ``scene_seed`` (the origin, a random heading): where
    ``held_out_view`` looks from and where evaluation flights in that world begin."""
    rng = np.random.default_rng(scene_seed)
    return DroneState(heading_deg=float(rng.uniform(-180, 180)))


def held_out_view(scene_seed: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """(first frame (H, W, 3) uint8, prompt) of the synthetic world ``scene_seed`` seen from its start pose (a
    random heading, the start kept clear of objects): first frames for evaluation and the demo's samples."""
    start = held_out_start(scene_seed)
    scene = make_scene(scene_seed, clear_xz=np.array([[start.x, start.z]]), clear_radius=0.06)
    return render_frame(scene, start.c2w(), height, width), scene.prompt
