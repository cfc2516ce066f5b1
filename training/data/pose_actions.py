"""Camera trajectory -> ``(T, 2, 8)`` actions: the pure conversion behind ``training.prepare_sekai`` (no I/O).

Poses are ``(N, 4, 4)`` camera-to-world matrices, one per source frame, OpenCV camera axes (x right, y down,
z forward), any world frame (the result is invariant to a rigid relabelling of the world). Recipe from
shared/notes/sekai.md: latent interval k spans source frames b[k-1]..b[k] with b[k] = round(4 r k), r = source
frames per clip frame, and the relative pose of its end in the frame of its start gives
    forward = t.z, right = t.x (down = t.y, no action), yaw = atan2(f.x, f.z), pitch = atan2(-f.y, hypot(f.x, f.z))
with t the relative translation and f the relative forward axis (yaw + = right, pitch + = up, in degrees).
Two measurement frames (the same choice must be used for training data and at inference):
    camera   (default) the start camera itself, as in the note.
    heading  (``heading_frame=True``) a level frame per camera: world up u is estimated as the direction most
             orthogonal to all camera x axes (a gimbal drone never rolls), right = horizontal part of camera x,
             forward = u x right. Forward/right are then horizontal, yaw is the heading change about u and pitch
             the change of the camera's elevation, so a camera tilted down still reads its true yaw (camera-frame
             yaw shrinks by cos(tilt)) and a level flight reads no vertical motion.
Flags follow the note: a translation flag needs its component above ``tau_t = max(0.25 * median step,
4 r 1e-4)`` and inside the 60-degree cone (component / |t| > 0.5); a rotation flag needs |angle| > 0.25 r degrees.
Magnitude = |component| where the flag is 1, else 0 (units of ``models.action_format``).
Shapes: N source poses, T latent intervals.
"""
from __future__ import annotations

import numpy as np

from models.action_format import FRAMES_PER_LATENT, NUM_ACTIONS

CONE_COS = 0.5  # cos(60 degrees): a translation counts only near its axis
TRANSLATION_MEDIAN_FRACTION = 0.25
TRANSLATION_FLOOR_PER_FRAME = 1e-4  # translation noise floor per source frame (normalised units)
ROTATION_DEG_PER_FRAME = 0.25  # rotation threshold per source frame (degrees)
UP_MIN_SPREAD = 2e-4  # second eigenvalue of the x-axis scatter needed to trust the up estimate (~3 deg of yaw)
PATH_TILT_RANGE_DEG = (-30.0, 75.0)  # camera tilts for which a path-based up estimate is believed


def latent_indices(num_steps: int, step: float = 1.0) -> np.ndarray:
    """Source-frame index ``(T+1,)`` of each latent boundary: round(4 * step * k)."""
    return np.round(FRAMES_PER_LATENT * step * np.arange(num_steps + 1)).astype(np.int64)


def max_steps(num_poses: int, step: float = 1.0) -> int:
    """The most latent intervals whose boundaries fit in ``num_poses`` source poses."""
    count = int((num_poses - 1) // (FRAMES_PER_LATENT * step)) + 1
    while count > 0 and latent_indices(count, step)[-1] > num_poses - 1:
        count -= 1
    return count


def translation_threshold(median_step: float, step: float = 1.0) -> float:
    return max(TRANSLATION_MEDIAN_FRACTION * float(median_step), FRAMES_PER_LATENT * step * TRANSLATION_FLOOR_PER_FRAME)


def rotation_threshold(step: float = 1.0) -> float:
    return ROTATION_DEG_PER_FRAME * step


def median_step(poses: np.ndarray, spacing: int) -> float:
    """Median camera displacement between poses ``spacing`` source frames apart (0 for too few poses)."""
    position = np.asarray(poses)[:, :3, 3]  # (N, 3)
    if len(position) <= spacing:
        return 0.0
    return float(np.median(np.linalg.norm(position[spacing:] - position[:-spacing], axis=1)))


def check_poses(poses) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) < 2:
        raise ValueError(f"poses: expected shape (N, 4, 4) with N >= 2, got {poses.shape}")
    if not np.isfinite(poses).all():
        raise ValueError("poses: contain NaN or Inf")
    return poses


def mean_tilt_deg(poses: np.ndarray, up: np.ndarray) -> float:
    """Mean downward tilt of the cameras below the horizon given world ``up`` (0 level, 90 straight down)."""
    forward = poses[:, :3, 2] / np.linalg.norm(poses[:, :3, 2], axis=1, keepdims=True)  # (N, 3)
    return float(np.degrees(np.arcsin(np.clip(-(forward @ up), -1, 1))).mean())


def estimate_up(poses) -> tuple[np.ndarray, str, float]:
    """World up ``(3,)``, how it was found and the spread that decided it.

    "x_axes": the direction most orthogonal to all camera x axes (needs a few degrees of yaw in the clip).
    "x_axes+path": without enough yaw the x axes leave the tilt undetermined; the flight path's directions are
        added, assuming the drone mostly flies level. A level camera climbing looks exactly like a nadir camera
        flying forward, so this is trusted only for tilts within PATH_TILT_RANGE_DEG.
    "camera_y": nothing else fits (hover, sideways only, near-vertical paths); the mean camera up (-y) is used,
        i.e. the heading frame degenerates to the camera frame.
    """
    poses = check_poses(poses)
    x_axes = poses[:, :3, 0] / np.linalg.norm(poses[:, :3, 0], axis=1, keepdims=True)  # (N, 3)
    scatter = x_axes.T @ x_axes / len(x_axes)  # (3, 3)
    values, vectors = np.linalg.eigh(scatter)  # ascending eigenvalues
    camera_up = -poses[:, :3, 1].mean(0)
    # Sign: cameras look level or down, so up points along camera up and against the mean viewing direction.
    toward = camera_up - poses[:, :3, 2].mean(0)
    if values[1] >= UP_MIN_SPREAD:
        up = vectors[:, 0] * np.sign(vectors[:, 0] @ toward or 1.0)
        return up, "x_axes", float(values[1])
    path = np.diff(poses[:, :3, 3], axis=0)  # (N-1, 3); weighting by |d|^2 lets tiny jitter count little
    values, vectors = np.linalg.eigh(scatter + path.T @ path / max(float((path ** 2).sum()), 1e-30))
    up = vectors[:, 0] * np.sign(vectors[:, 0] @ toward or 1.0)
    low, high = PATH_TILT_RANGE_DEG
    if values[1] >= UP_MIN_SPREAD and low <= mean_tilt_deg(poses, up) <= high:
        return up, "x_axes+path", float(values[1])
    mean_x = x_axes.mean(0) / np.linalg.norm(x_axes.mean(0))
    up = camera_up - (camera_up @ mean_x) * mean_x
    return up / np.linalg.norm(up), "camera_y", float(values[1])


def heading_frames(poses: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level camera-to-world frames ``(N, 4, 4)`` [right, down, forward | position], elevation and roll (N,) deg."""
    x_axes, forward = poses[:, :3, 0], poses[:, :3, 2]  # (N, 3) each
    right = x_axes - (x_axes @ up)[:, None] * up
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    ahead = np.cross(up, right)  # (N, 3) horizontal heading: up x right = forward for OpenCV axes
    frames = np.tile(np.eye(4), (len(poses), 1, 1))
    frames[:, :3, 0], frames[:, :3, 1], frames[:, :3, 2] = right, -up, ahead
    frames[:, :3, 3] = poses[:, :3, 3]
    elevation = np.degrees(np.arctan2(forward @ up, np.einsum("nc,nc->n", forward, ahead)))
    roll = np.degrees(np.arcsin(np.clip((x_axes @ up) / np.linalg.norm(x_axes, axis=1), -1, 1)))
    return frames, elevation, roll


def _relative(poses: np.ndarray) -> np.ndarray:
    """inv(C_k) @ C_{k+1} for consecutive poses: (M-1, 4, 4)."""
    return np.linalg.inv(poses[:-1]) @ poses[1:]


def measure_motion(boundary_poses, heading_frame: bool = False, up=None) -> dict[str, np.ndarray]:
    """Per-interval motion (T,) between consecutive poses ``(T+1, 4, 4)``: forward, right, down (translation),
    yaw, pitch, roll (degrees). ``up`` (heading frame only) defaults to ``estimate_up`` of these poses."""
    poses = check_poses(boundary_poses)
    relative = _relative(poses)  # (T, 4, 4)
    if heading_frame:
        up = estimate_up(poses)[0] if up is None else np.asarray(up, np.float64) / np.linalg.norm(up)
        frames, elevation, roll = heading_frames(poses, up)
        level = _relative(frames)  # (T, 4, 4) level-to-level: pure yaw plus translation
        yaw = np.degrees(np.arctan2(level[:, 0, 2], level[:, 2, 2]))
        translation = level[:, :3, 3]
        pitch, roll = np.diff(elevation), np.diff(roll)
    else:
        f = relative[:, :3, 2]  # (T, 3) relative forward axis
        yaw = np.degrees(np.arctan2(f[:, 0], f[:, 2]))
        pitch = np.degrees(np.arctan2(-f[:, 1], np.hypot(f[:, 0], f[:, 2])))
        roll = np.degrees(np.arctan2(relative[:, 1, 0], relative[:, 0, 0]))
        translation = relative[:, :3, 3]
    return {"forward": translation[:, 2], "right": translation[:, 0], "down": translation[:, 1],
            "yaw": yaw, "pitch": pitch, "roll": roll}


def motion_to_actions(motion: dict[str, np.ndarray], tau_t: float, tau_r: float) -> np.ndarray:
    """Thresholded ``(T, 2, 8)`` float32 actions in ACTION_NAMES order from ``measure_motion``'s output."""
    forward, right, down = motion["forward"], motion["right"], motion["down"]
    norm = np.sqrt(forward ** 2 + right ** 2 + down ** 2)  # (T,)
    signed = [forward, -forward, -right, right, -motion["yaw"], motion["yaw"], motion["pitch"], -motion["pitch"]]
    actions = np.zeros((len(forward), 2, NUM_ACTIONS), dtype=np.float32)
    for index, value in enumerate(signed):
        if index < 4:  # translation: above the threshold and inside the 60-degree cone
            active = (value > tau_t) & (value > CONE_COS * norm)
        else:
            active = value > tau_r
        actions[:, 0, index] = active
        actions[:, 1, index] = np.where(active, value, 0.0)
    return actions


def poses_to_actions(poses, step: float = 1.0, num_steps: int | None = None, heading_frame: bool = False,
                     up=None, median: float | None = None) -> np.ndarray:
    """Source poses ``(N, 4, 4)`` of one clip (first pose = first clip frame) -> ``(T, 2, 8)`` float32 actions.

    step: source frames per clip frame (30 fps source, 24 fps clip: 1.25). num_steps: T (default: all that fit).
    up: world up for the heading frame (default: estimated from these poses). median: median displacement at
    spacing 4*step for the translation threshold (default: measured on these intervals).
    """
    poses = check_poses(poses)
    if not np.isfinite(step) or step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    num_steps = max_steps(len(poses), step) if num_steps is None else int(num_steps)
    if num_steps < 1 or latent_indices(num_steps, step)[-1] > len(poses) - 1:
        raise ValueError(f"num_steps: {num_steps} intervals of {4 * step:g} source frames need more than "
                         f"{len(poses)} poses")
    motion = measure_motion(poses[latent_indices(num_steps, step)], heading_frame,
                            up if up is not None or not heading_frame else estimate_up(poses)[0])
    motion = normalise_spacing(motion, num_steps, step)
    if median is None:
        median = float(np.median(np.sqrt(motion["forward"] ** 2 + motion["right"] ** 2 + motion["down"] ** 2)))
    return motion_to_actions(motion, translation_threshold(median, step), rotation_threshold(step))


def normalise_spacing(motion: dict[str, np.ndarray], num_steps: int, step: float) -> dict[str, np.ndarray]:
    """Rescale intervals whose rounded length differs from 4*step (e.g. 25 -> 24 fps) to per-4-clip-frame units."""
    spacing = np.diff(latent_indices(num_steps, step)).astype(np.float64)  # (T,)
    factor = FRAMES_PER_LATENT * step / spacing
    return {key: value * factor for key, value in motion.items()}
