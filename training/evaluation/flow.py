"""Camera motion and the 8 actions from dense optical flow (OpenCV DIS, no downloaded weights). Pure numpy/OpenCV.

Per latent interval t (frames 4t -> 4t+4, the frames action t drives) the flow between the two frames is fitted
with the instantaneous rigid-motion model (camera axes x right, y down, z forward; normalised image coordinates
x = (u - cx) / f, y = (v - cy) / f):
    flow(x, y) = d(x, y) * [x Tz - Tx, y Tz - Ty]                                   translation / depth
               + [x y wx - (1 + x^2) wy + y wz, (1 + y^2) wx - x y wy - x wz]        rotation (depth-free)
with w = (wx, wy, wz) the rotation (pitch up = +wx, yaw right = +wy, roll = wz), T a unit translation direction and
d the inverse depth (times |T|), a smooth bilinear field on a coarse grid (DEPTH_GRID nodes a side). For a fixed T
the model is linear in (depth nodes, w), so T is found by a search over the hemisphere plus local refinement,
then again after one robust (Huber) reweighting with a weak, noise-scaled prior towards small rotations. T and -T
fit alike: the sign that puts the scene in front of the camera (mean d > 0) wins, so a reversed video turns Forward
into Back. Where does each action come from:
    Forward/Back   expansion/contraction about the focus of expansion (Tz)
    Left/Right     the depth-dependent (parallax) part of the horizontal flow (Tx): near things move more
    Yaw            the depth-independent horizontal rotation wy
    Pitch          the depth-independent vertical rotation wx
A pure rotation is also fitted alone; when the translation strength (75th percentile of d) is below STRENGTH_MIN,
or the rotation alone leaves less than RATIO_MIN times the full model's median residual, the interval is read as
rotation only (the full model would otherwise explain part of a yaw as a sideways drift of a scene whose depth
varies smoothly across the image).
Reliability: flow is computed at WORK_WIDTH (small frames are upsampled: DIS needs a few pixels per patch) in
both directions; only textured points whose forward and backward flows agree are fitted.
Units (models.action_format): rotation in degrees per interval (exact given the focal length); translation is
only known relative to scene depth, so the strength is multiplied by TRANSLATION_SCALE, calibrated on
``training.synthetic`` flights (drone 0.03 above the ground); on other footage it is a relative number.
Limits: an assumed focal length (``focal``, fraction of the width; the renderer's 0.7 by default); yaw is read
about the camera's y axis (a camera pitched by e reads cos(e) of the yaw); a scene without depth variation (a
flat wall seen head-on) cannot separate yaw from strafe; independently moving objects, flicker and cuts break the
rigid-scene assumption (they are partly rejected by the robust weights and the consistency check).
Shapes: N frames, T = (N - 1) // 4 intervals, n fitted points, K depth-grid cells, D candidate directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.action_format import ACTION_NAMES, FRAMES_PER_LATENT, NUM_ACTIONS

FOCAL = 0.7  # focal length / image width of training.data.scene (71 degrees horizontal field of view)
WORK_WIDTH = 192  # flow resolution: DIS is accurate to ~0.2 px here; 480x832 frames are shrunk to 192x111
GRID_POINTS = 32  # fitted points per image row at most (a 32 x ~32 lattice)
BORDER = 1 / 16  # image margin left out: content enters and leaves there
TEXTURE_MIN_REL, TEXTURE_MIN_ABS = 0.02, 1e-6  # structure-tensor floor, relative to the image's 90th percentile
CONSISTENCY_PX, CONSISTENCY_REL = 0.5, 0.05  # forward-backward flow mismatch allowed: px + fraction of |flow|
MIN_POINTS = 30  # fewer reliable points than this: the interval is unreadable (no action)
DEPTH_GRID = 6  # inverse-depth grid nodes per side of a square image (scaled by the aspect ratio)
# A prior towards small rotations, worth (noise / ROTATION_PRIOR_RAD)^2 of every point: along the directions where
# the depth grid can mimic a rotation (a translation plus a tilted depth ramp), the rotation is then only believed
# as far as the data pins it down. Without it a forward flight sometimes lands on a 10-degree rotation plus a
# drift, and a strafe shows a yaw. Scaled by the noise, so exact flow is fitted without bias.
ROTATION_PRIOR_RAD = 0.06
HUBER = 2.0  # robust weights: residuals beyond HUBER x (1.48 MAD) count linearly
# Decision thresholds and the translation unit, calibrated on 40 synthetic flights (96x96, 33 frames:
# training.evaluation.calibration.calibrate(synthetic_flights(40, seed=1000)), see docs/evaluation.md), validated
# on other seeds.
STRENGTH_MIN = 0.02  # translation strength (75th percentile inverse-depth flow) below which there is no translation
RATIO_MIN = 1.7  # ... nor unless the rotation-only fit leaves this many times the full model's median residual
TRANSLATION_SCALE = 0.08  # world units per unit of strength: synthetic 0.01 per interval reads ~0.01
TRANSLATION_MIN = 0.002  # per-axis translation threshold (world units per interval, after TRANSLATION_SCALE)
ROTATION_MIN = 0.25  # per-axis rotation threshold (degrees per interval); commanded rotations are >= 0.4
CONE_COS = 0.5  # a translation axis counts only within 60 degrees of the motion (as training.data.pose_actions)
AXES = ("forward", "right", "yaw", "pitch")  # signed axes: + = Forward, Right, Yaw Right, Pitch Up
AXIS_ACTIONS = {"forward": ("Forward", "Back"), "right": ("Right", "Left"), "yaw": ("Yaw Right", "Yaw Left"),
                "pitch": ("Pitch Up", "Pitch Down")}  # (positive, negative) action of each axis


@dataclass(frozen=True)
class FlowSettings:
    """How frames are read: focal length (fraction of the width), flow resolution and decision thresholds."""
    focal: float = FOCAL
    work_width: int = WORK_WIDTH
    strength_min: float = STRENGTH_MIN
    ratio_min: float = RATIO_MIN
    translation_scale: float = TRANSLATION_SCALE
    translation_min: float = TRANSLATION_MIN
    rotation_min: float = ROTATION_MIN
    # Frames between the two images of a flow fit: 4 reads each interval from its boundary frames (what the
    # thresholds were calibrated on); 1 or 2 fit every (other) frame pair and add up the motion per interval, for
    # fast motion (beyond ~3 degrees or ~0.03 per interval) that the instantaneous model and DIS read poorly.
    stride: int = FRAMES_PER_LATENT

    def __post_init__(self):
        for name in ("focal", "translation_scale", "translation_min", "rotation_min", "strength_min", "ratio_min"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.work_width, int) or self.work_width < 32:
            raise ValueError(f"work_width must be an integer >= 32, got {self.work_width!r}")
        if self.stride not in (1, 2, FRAMES_PER_LATENT):
            raise ValueError(f"stride must be 1, 2 or {FRAMES_PER_LATENT}, got {self.stride!r}")


# ------------------------------------------------------------------------------------------------ frames, flow
def as_frames(frames) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` from uint8 or [0, 1] float ``(N, H, W, 3)`` arrays or a list of PIL images."""
    if isinstance(frames, (list, tuple)):
        frames = [np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f) for f in frames]
        frames = np.stack(frames) if frames else np.zeros((0,))
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3]) < 16:
        raise ValueError(f"frames: expected (N, H, W, 3) RGB with H, W >= 16, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating) or not np.isfinite(frames).all():
            raise ValueError(f"frames: expected uint8 or finite floats in [0, 1], got {frames.dtype}")
        frames = (np.clip(frames, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return frames


def work_gray(frame: np.ndarray, work_width: int) -> np.ndarray:
    """Grey uint8 frame at the work resolution ``(h, w)``: area-averaged when shrinking, cubic when enlarging."""
    import cv2

    height, width = frame.shape[:2]
    size = (work_width, max(16, int(round(height * work_width / width))))
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if width > work_width else cv2.INTER_CUBIC)


def dense_flow(gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
    """DIS optical flow ``(h, w, 2)`` in pixels from gray0 to gray1."""
    import cv2

    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(gray0, gray1, None)


def consistency(flow: np.ndarray, back: np.ndarray) -> np.ndarray:
    """|forward + backward flow at the forward target| ``(h, w)``: ~0 where the flow is trustworthy."""
    import cv2

    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    warped = cv2.remap(back, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)  # (h, w, 2) backward flow where each pixel lands
    return np.linalg.norm(flow + warped, axis=-1)


def texture(gray: np.ndarray) -> np.ndarray:
    """Smaller eigenvalue of the 5x5 structure tensor ``(h, w)``: flow is only defined where it is large."""
    import cv2

    image = gray.astype(np.float32) / 255.0
    gx, gy = cv2.Sobel(image, cv2.CV_32F, 1, 0), cv2.Sobel(image, cv2.CV_32F, 0, 1)
    a, b, c = (cv2.boxFilter(p, -1, (5, 5)) for p in (gx * gx, gx * gy, gy * gy))
    return 0.5 * (a + c) - np.sqrt(0.25 * (a - c) ** 2 + b * b)


def interval_points(gray0, gray1, focal_px: float):
    """Reliable flow samples of one interval: normalised coordinates x, y (n,) and flow (n, 2), or None."""
    height, width = gray0.shape
    flow, back = dense_flow(gray0, gray1), dense_flow(gray1, gray0)  # (h, w, 2) each
    step = max(1, width // GRID_POINTS)
    margin = max(2, int(round(width * BORDER)))
    ys, xs = np.mgrid[margin:height - margin:step, margin:width - margin:step]  # (gh, gw) lattice
    tex = texture(gray0)
    floor = max(TEXTURE_MIN_ABS, TEXTURE_MIN_REL * float(np.percentile(tex, 90)))
    sampled = flow[ys, xs]  # (gh, gw, 2)
    agree = consistency(flow, back)[ys, xs] < CONSISTENCY_PX + CONSISTENCY_REL * np.linalg.norm(sampled, axis=-1)
    keep = (tex[ys, xs] > floor) & agree & np.isfinite(sampled).all(-1)  # (gh, gw)
    if keep.sum() < MIN_POINTS:
        return None
    x = (xs[keep] + 0.5 - 0.5 * width) / focal_px  # (n,)
    y = (ys[keep] + 0.5 - 0.5 * height) / focal_px
    return x, y, sampled[keep] / focal_px  # (n,), (n,), (n, 2)


# --------------------------------------------------------------------------------------------- motion fitting
def rotation_basis(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flow per unit rotation (wx, wy, wz): horizontal ``(n, 3)`` and vertical ``(n, 3)`` rows."""
    horizontal = np.stack([x * y, -(1 + x * x), y], axis=1)
    vertical = np.stack([1 + y * y, -x * y, -x], axis=1)
    return horizontal, vertical


def huber_weights(residual: np.ndarray) -> np.ndarray:
    scale = HUBER * 1.4826 * float(np.median(residual)) + 1e-9
    return np.minimum(1.0, scale / np.maximum(residual, 1e-12))


def fit_rotation(x, y, flow, iterations: int = 2) -> np.ndarray:
    """Robust least-squares rotation ``(3,)`` radians explaining the whole flow (no translation)."""
    bu, bv = rotation_basis(x, y)
    design = np.concatenate([bu, bv])  # (2n, 3)
    target = np.concatenate([flow[:, 0], flow[:, 1]])  # (2n,)
    weight = np.ones(len(x))
    for _ in range(iterations + 1):
        root = np.sqrt(np.concatenate([weight, weight]))[:, None]  # (2n, 1)
        omega = np.linalg.lstsq(design * root, target * root[:, 0], rcond=None)[0]
        residual = np.hypot(*(flow - np.stack([bu @ omega, bv @ omega], 1)).T)  # (n,)
        weight = huber_weights(residual)
    return omega, float(np.median(residual))


def fibonacci_hemisphere(count: int) -> np.ndarray:
    """About ``count`` unit directions ``(D, 3)`` spread evenly over z >= 0."""
    i = np.arange(2 * count) + 0.5
    polar, azimuth = np.arccos(1 - i / count), np.pi * (1 + 5 ** 0.5) * i
    dirs = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1)
    return dirs[dirs[:, 2] >= 0]


COARSE_DIRECTIONS = fibonacci_hemisphere(200)
PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # the products T_p T_q of the quadratic terms


def bilinear_basis(x: np.ndarray, y: np.ndarray, cells: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation from a (gy, gx) node grid spanning the points: node index and weight ``(n, 4)``."""
    gy, gx = cells
    fx = (x - x.min()) / max(np.ptp(x), 1e-9) * (gx - 1)  # (n,) node coordinates
    fy = (y - y.min()) / max(np.ptp(y), 1e-9) * (gy - 1)
    ix, iy = np.minimum(fx.astype(int), gx - 2), np.minimum(fy.astype(int), gy - 2)
    ax, ay = fx - ix, fy - iy
    index = np.stack([iy * gx + ix, iy * gx + ix + 1, (iy + 1) * gx + ix, (iy + 1) * gx + ix + 1], 1)  # (n, 4)
    weight = np.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], 1)  # (n, 4)
    return index, weight


class DepthGridFit:
    """flow = (basis @ depth) * a(T) + rotation; for a direction T the rest is one linear least squares.

    a(T) is linear in T, so the normal equations of every candidate T are sums of a few matrices built once.
    """

    def __init__(self, x, y, flow, cells: tuple[int, int]):
        self.x, self.y, self.flow = x, y, flow
        self.k = cells[0] * cells[1]
        index, weight = bilinear_basis(x, y, cells)  # (n, 4) each
        self.basis = np.zeros((len(x), self.k))  # (n, K) dense copy for the small products
        np.add.at(self.basis, (np.arange(len(x))[:, None], index), weight)
        # (n, 16) entries of each point's 4x4 outer product, for building K x K sums with one bincount
        self.pair_index = (index[:, :, None] * self.k + index[:, None, :]).reshape(len(x), 16)
        self.pair_weight = (weight[:, :, None] * weight[:, None, :]).reshape(len(x), 16)
        self.bu, self.bv = rotation_basis(x, y)  # (n, 3) each
        one, zero = np.ones_like(x), np.zeros_like(x)
        self.cu, self.cv = (-one, zero, x), (zero, -one, y)  # a_u = sum_p T_p cu[p], a_v = sum_p T_p cv[p]
        self.prepare(np.ones(len(x)))

    def prepare(self, weight: np.ndarray, prior: float = 0.0) -> None:
        """Normal-equation pieces for point weights ``(n,)`` and a rotation prior (added to the rotation block)."""
        basis, bu, bv, fu, fv, cu, cv = self.basis, self.bu, self.bv, self.flow[:, 0], self.flow[:, 1], self.cu, self.cv
        self.dd = np.stack([self.gram(weight * (cu[p] * cu[q] + cv[p] * cv[q])) for p, q in PAIRS])  # (6, K, K)
        self.db = np.stack([basis.T @ (bu * (weight * cu[p])[:, None] + bv * (weight * cv[p])[:, None])
                            for p in range(3)])  # (3, K, 3)
        self.bb = (bu * weight[:, None]).T @ bu + (bv * weight[:, None]).T @ bv  # (3, 3)
        self.rd = np.stack([basis.T @ (weight * (cu[p] * fu + cv[p] * fv)) for p in range(3)])  # (3, K)
        self.rb = bu.T @ (weight * fu) + bv.T @ (weight * fv)  # (3,)
        self.energy = float((weight * (fu * fu + fv * fv)).sum())
        # A tiny ridge keeps cells without points (and a translation-free flow) well posed.
        self.ridge = 1e-6 * float(np.trace(self.bb)) / 3 + 1e-12
        self.bb = self.bb + prior * np.eye(3)

    def gram(self, point_weight: np.ndarray) -> np.ndarray:
        """basis.T @ diag(point_weight) @ basis ``(K, K)``, from the 16 nonzero products per point."""
        values = (self.pair_weight * point_weight[:, None]).ravel()
        return np.bincount(self.pair_index.ravel(), weights=values, minlength=self.k * self.k).reshape(self.k, self.k)

    def solve(self, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residual energy ``(D,)`` and solution ``(D, K + 3)`` [depth grid, rotation] per direction ``(D, 3)``."""
        k = self.dd.shape[1]
        products = np.stack([dirs[:, p] * dirs[:, q] * (1 if p == q else 2) for p, q in PAIRS], 1)  # (D, 6)
        normal = np.empty((len(dirs), k + 3, k + 3))
        normal[:, :k, :k] = np.einsum("dm,mij->dij", products, self.dd) + self.ridge * np.eye(k)
        cross = np.einsum("dp,pij->dij", dirs, self.db)  # (D, K, 3)
        normal[:, :k, k:], normal[:, k:, :k], normal[:, k:, k:] = cross, cross.transpose(0, 2, 1), self.bb
        rhs = np.concatenate([dirs @ self.rd, np.broadcast_to(self.rb, (len(dirs), 3))], 1)  # (D, K + 3)
        solution = np.linalg.solve(normal, rhs[..., None])[..., 0]
        return self.energy - (solution * rhs).sum(1), solution

    def search(self) -> tuple[np.ndarray, np.ndarray]:
        """Best direction ``(3,)`` and its solution: coarse hemisphere, then three shrinking 5x5 local grids."""
        cost, solution = self.solve(COARSE_DIRECTIONS)
        best = int(np.argmin(cost))
        direction, sol = COARSE_DIRECTIONS[best], solution[best]
        spacing = 0.12
        for _ in range(3):
            a = np.cross(direction, (1.0, 0.0, 0.0) if abs(direction[0]) < 0.9 else (0.0, 1.0, 0.0))
            a /= np.linalg.norm(a)
            b = np.cross(direction, a)
            offsets = np.linspace(-spacing, spacing, 5)
            cand = direction + offsets[:, None, None] * a + offsets[None, :, None] * b  # (5, 5, 3)
            cand = cand.reshape(-1, 3) / np.linalg.norm(cand.reshape(-1, 3), axis=1, keepdims=True)
            cost, solution = self.solve(cand)
            best = int(np.argmin(cost))
            direction, sol = cand[best], solution[best]
            spacing /= 2.5
        return direction, sol

    def residual(self, direction, sol) -> np.ndarray:
        depth, omega = self.basis @ sol[:-3], sol[-3:]  # (n,), (3,)
        au, av = self.x * direction[2] - direction[0], self.y * direction[2] - direction[1]
        return np.hypot(self.flow[:, 0] - depth * au - self.bu @ omega, self.flow[:, 1] - depth * av - self.bv @ omega)


def depth_cells(x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    aspect = max(np.ptp(x), 1e-9) / max(np.ptp(y), 1e-9)
    return (max(2, int(round(DEPTH_GRID / np.sqrt(aspect)))), max(2, int(round(DEPTH_GRID * np.sqrt(aspect)))))


def fit_motion(x, y, flow) -> dict:
    """Rigid motion of one interval from normalised flow samples: rotation (radians, full model and rotation
    only), unit translation direction, inverse depth per point ``(n,)`` and the strength (its 75th percentile)."""
    fit = DepthGridFit(x, y, flow, depth_cells(x, y))
    direction, sol = fit.search()
    residual = fit.residual(direction, sol)
    noise = 1.4826 * float(np.median(residual))
    weight = huber_weights(residual)  # one robust pass: occlusions, moving things
    fit.prepare(weight, weight.sum() * (noise / ROTATION_PRIOR_RAD) ** 2)
    direction, sol = fit.search()
    depth = fit.basis @ sol[:-3]  # (n,)
    if depth.mean() < 0:  # T and -T fit alike; things are in front of the camera
        direction, depth, sol = -direction, -depth, np.concatenate([-sol[:-3], sol[-3:]])
    full_residual = float(np.median(fit.residual(direction, sol)))
    rotation_only, rotation_residual = fit_rotation(x, y, flow)
    return {"rotation": sol[-3:], "rotation_only": rotation_only, "direction": direction,
            "depth": depth, "strength": float(np.percentile(depth, 75)), "full_residual": full_residual,
            "rotation_residual": rotation_residual}


# ---------------------------------------------------------------------------------------------- per video
def interval_motion(fit: dict | None, settings: FlowSettings) -> dict:
    """Signed per-axis motion of one interval (AXES, plus down and roll) from ``fit_motion``'s output."""
    if fit is None:
        return {"forward": 0.0, "right": 0.0, "down": 0.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0,
                "strength": 0.0, "readable": False}
    share = settings.stride / FRAMES_PER_LATENT  # the part of an interval one fit covers
    moving = fit["strength"] >= settings.strength_min * share and \
        fit["rotation_residual"] >= settings.ratio_min * fit["full_residual"]
    omega = np.degrees(fit["rotation"] if moving else fit["rotation_only"])  # (3,) degrees per interval
    translation = fit["direction"] * fit["strength"] * settings.translation_scale if moving else np.zeros(3)
    return {"forward": float(translation[2]), "right": float(translation[0]), "down": float(translation[1]),
            "yaw": float(omega[1]), "pitch": float(omega[0]), "roll": float(omega[2]),
            "strength": fit["strength"], "readable": True}


def estimate_motion(frames, settings: FlowSettings | None = None) -> dict[str, np.ndarray]:
    """Per-interval camera motion of a video ``(N, H, W, 3)``: ``{key: (T,)}`` for forward, right, down (world
    units per interval), yaw, pitch, roll (degrees per interval, + = right / up / clockwise), strength and readable
    (bool: enough reliable flow). T = (N - 1) // 4; interval t is read from frames 4t -> 4t + 4."""
    settings = settings or FlowSettings()
    frames = as_frames(frames)
    if len(frames) < FRAMES_PER_LATENT + 1:
        raise ValueError(f"frames: need at least {FRAMES_PER_LATENT + 1} frames (one interval), got {len(frames)}")
    return boundary_motion(frames[::settings.stride], settings)


def boundary_motion(boundaries, settings: FlowSettings | None = None) -> dict[str, np.ndarray]:
    """``estimate_motion`` from every ``settings.stride``-th frame only (frames 0, 4, 8, ... by default:
    ``(T * 4 / stride + 1, H, W, 3)``); the fits of one interval's frame pairs are added up."""
    settings = settings or FlowSettings()
    boundaries = as_frames(boundaries)
    pairs_per_interval = FRAMES_PER_LATENT // settings.stride
    if len(boundaries) < pairs_per_interval + 1:
        raise ValueError(f"frames: need at least {pairs_per_interval + 1} frames 'stride' apart (one interval), "
                         f"got {len(boundaries)}")
    grays = [work_gray(frame, settings.work_width) for frame in boundaries]
    focal_px = settings.focal * grays[0].shape[1]
    rows = []
    for t in range((len(grays) - 1) // pairs_per_interval * pairs_per_interval):
        points = interval_points(grays[t], grays[t + 1], focal_px)
        rows.append(interval_motion(None if points is None else fit_motion(*points), settings))
    motion = {key: np.array([row[key] for row in rows]) for key in rows[0]}  # {key: (T * pairs,)}
    return {key: sum_intervals(value, pairs_per_interval, key) for key, value in motion.items()}


def sum_intervals(values: np.ndarray, pairs: int, key: str) -> np.ndarray:
    """(T * pairs,) per frame pair -> (T,) per interval: motion adds up, strength too; readable needs all pairs."""
    grouped = values.reshape(-1, pairs)  # (T, pairs)
    return grouped.all(axis=1) if key == "readable" else grouped.sum(axis=1)


def motion_to_actions(motion: dict[str, np.ndarray], settings: FlowSettings | None = None) -> np.ndarray:
    """Thresholded ``(T, 2, 8)`` float32 actions (binary, magnitude in action units) from ``estimate_motion``."""
    settings = settings or FlowSettings()
    steps = len(motion["forward"])
    actions = np.zeros((steps, 2, NUM_ACTIONS), dtype=np.float32)
    norm = np.sqrt(motion["forward"] ** 2 + motion["right"] ** 2 + motion["down"] ** 2)  # (T,)
    for axis in AXES:
        value = np.asarray(motion[axis], dtype=np.float64)  # (T,)
        translation = axis in ("forward", "right")
        threshold = settings.translation_min if translation else settings.rotation_min
        for sign, name in zip((1.0, -1.0), AXIS_ACTIONS[axis]):
            amount = sign * value
            active = amount > threshold
            if translation:
                active &= amount > CONE_COS * norm
            index = ACTION_NAMES.index(name)
            actions[:, 0, index] = active
            actions[:, 1, index] = np.where(active, amount, 0.0)
    return actions


def estimate_actions(frames, settings: FlowSettings | None = None) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` (uint8, [0, 1] floats or PIL images) -> estimated ``(T, 2, 8)`` actions,
    T = (N - 1) // 4, interval t read from frames 4t -> 4t + 4."""
    settings = settings or FlowSettings()
    return motion_to_actions(estimate_motion(frames, settings), settings)
