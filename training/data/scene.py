"""The procedural drone world of ``training.synthetic``: a random scene and a vectorised numpy ray caster.

World frame (one unit = one Sekai-normalised unit; poses stay within +-1):
    x east, y DOWN (gravity), z north. The ground is the plane y = 0, so "h above ground" is y = -h.
    A level camera heading north then has the identity camera-to-world rotation with OpenCV camera axes
    (x right, y down, z forward), like the first pose of Sekai's game clips.
Scale: the drone flies ~0.03 above the ground; objects are 0.004-0.03 wide and 0.005-0.09 tall and stand
0.05-1.0 from the flight path (which is kept clear), so a 0.01 step per 4-frame interval moves near objects by
several pixels even at 128x128.
Everything at "infinity" (sky gradient, sun, mountain silhouette) depends only on the ray direction, so yaw
rotates it and translation leaves it still; the ground, pillars, boxes and trees give parallax.
Shapes: P pixels (H*W), K objects of one kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FOCAL = 0.7  # focal length / image width (about 71 degrees horizontal field of view)
EPS = 1e-6
GROUND_TEXTURE_SCALE = 0.15  # size of the brightness patches on the ground

# Style vocabularies: the keys are the words used in the prompt, the values drive the renderer.
GROUNDS = {
    "green checkered field": dict(pattern="checker", cell=0.02, colors=[(0.30, 0.55, 0.22), (0.46, 0.68, 0.30)]),
    "sandy desert": dict(pattern="checker", cell=0.03, colors=[(0.82, 0.70, 0.47), (0.68, 0.55, 0.35)]),
    "patchwork of farmland": dict(pattern="patches", cell=0.05, colors=[
        (0.78, 0.70, 0.30), (0.33, 0.55, 0.24), (0.55, 0.42, 0.27), (0.48, 0.66, 0.34)]),
    "snowy plain": dict(pattern="checker", cell=0.025, colors=[(0.93, 0.95, 0.98), (0.76, 0.80, 0.88)]),
    "grey concrete plaza": dict(pattern="checker", cell=0.015, colors=[(0.64, 0.64, 0.61), (0.48, 0.48, 0.46)]),
}
# Object vocabulary: prompt words -> {kind: base colours}; a kind's colours are jittered per object.
OBJECTS = {
    "red pillars": {"pillar": [(0.78, 0.16, 0.12), (0.88, 0.30, 0.20)]},
    "white towers": {"tower": [(0.92, 0.92, 0.90), (0.80, 0.81, 0.84)]},
    "tall trees": {"tree": [(0.18, 0.45, 0.16), (0.28, 0.55, 0.20)]},
    "blue boxes": {"box": [(0.18, 0.32, 0.75), (0.30, 0.48, 0.85)]},
    "concrete blocks": {"block": [(0.60, 0.60, 0.58), (0.45, 0.46, 0.48)]},
    "pillars and trees": {"pillar": [(0.85, 0.55, 0.15), (0.80, 0.45, 0.12)], "tree": [(0.25, 0.52, 0.20)]},
}
TIMES = {
    "at noon": dict(zenith=(0.25, 0.45, 0.85), horizon=(0.72, 0.82, 0.93), sun_elev=55.0, sun_color=(1.0, 0.97, 0.9),
                    sun=0.75, ambient=0.45, fog=2.0, clouds=0.55),
    "at dusk": dict(zenith=(0.20, 0.22, 0.45), horizon=(0.95, 0.62, 0.42), sun_elev=7.0, sun_color=(1.0, 0.62, 0.35),
                    sun=0.65, ambient=0.40, fog=1.5, clouds=0.6),
    "under an overcast sky": dict(zenith=(0.58, 0.61, 0.66), horizon=(0.80, 0.81, 0.84), sun_elev=40.0,
                                  sun_color=(1.0, 1.0, 1.0), sun=0.15, ambient=0.85, fog=1.2, clouds=0.3),
    "in the morning haze": dict(zenith=(0.55, 0.65, 0.80), horizon=(0.88, 0.88, 0.85), sun_elev=20.0,
                                sun_color=(1.0, 0.9, 0.75), sun=0.45, ambient=0.60, fog=0.6, clouds=0.7),
}


@dataclass
class Scene:
    """Objects (world units, see module docstring) and style of one procedural world."""
    ground: str
    objects: str
    time: str
    cylinders: np.ndarray  # (K, 4) centre x, centre z, radius, height
    cylinder_colors: np.ndarray  # (K, 3) RGB in [0, 1]
    cylinder_bands: np.ndarray  # (K,) contrast of horizontal bands (texture that shows vertical motion)
    boxes: np.ndarray  # (K, 6) min x, min y, min z, max x, max y, max z
    box_colors: np.ndarray  # (K, 3)
    spheres: np.ndarray  # (K, 4) centre x, y, z, radius (tree canopies)
    sphere_colors: np.ndarray  # (K, 3)
    noise: np.ndarray = field(repr=False)  # (S, S) value-noise lattice for ground, clouds and foliage
    mountains: np.ndarray = field(repr=False)  # (M, 3) amplitude (rad), frequency (per turn), phase

    @property
    def prompt(self) -> str:
        """A scene description with no camera-motion words."""
        return f"a drone flies over a {self.ground} with {self.objects} {self.time}"


def intrinsics(height: int, width: int) -> np.ndarray:
    """Pinhole intrinsics normalised by width (row 0) and height (row 1), like Sekai's ``intrinsic``."""
    return np.array([[FOCAL, 0.0, 0.5], [0.0, FOCAL * width / height, 0.5], [0.0, 0.0, 1.0]])


def _pick(rng: np.random.Generator, options, value):
    if value is None:
        return list(options)[rng.integers(len(options))]
    if value not in options:
        raise ValueError(f"unknown style {value!r}; expected one of {list(options)}")
    return value


def _jitter(rng, colors, count):
    base = np.asarray(colors, dtype=np.float32)[rng.integers(len(colors), size=count)]  # (K, 3)
    return np.clip(base * rng.uniform(0.88, 1.12, size=(count, 1)), 0.0, 1.0).astype(np.float32)


def _place(rng, count, clear_xz, clear_radius, footprint):
    """Positions (count, 2) around the clear points at log-uniform distance, none within the clear radius."""
    clear = np.asarray(clear_xz, dtype=np.float64).reshape(-1, 2)  # (M, 2)
    n = 8 * count
    anchor = clear[rng.integers(len(clear), size=n)]  # (n, 2)
    distance = np.exp(rng.uniform(np.log(0.05), np.log(1.0), size=n))  # many near objects, some far ones
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    xz = anchor + distance[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)  # (n, 2)
    gap = np.sqrt(((xz[:, None, :] - clear[None, :, :]) ** 2).sum(-1)).min(axis=1)  # (n,)
    keep = np.flatnonzero(gap > clear_radius + footprint[:n])[:count]
    return xz[keep], keep


def make_scene(seed: int, clear_xz=None, clear_radius: float = 0.03, ground: str | None = None,
               objects: str | None = None, time: str | None = None, num_objects: int | None = None) -> Scene:
    """A random world; ``clear_xz`` (M, 2) are ground positions (x, z) the drone passes, kept free of objects."""
    rng = np.random.default_rng(seed)
    ground, objects, time = _pick(rng, GROUNDS, ground), _pick(rng, OBJECTS, objects), _pick(rng, TIMES, time)
    count = int(num_objects if num_objects is not None else rng.integers(60, 90))
    clear = np.zeros((1, 2)) if clear_xz is None else np.asarray(clear_xz, dtype=np.float64).reshape(-1, 2)
    kinds = list(OBJECTS[objects])
    kind = np.asarray(kinds)[rng.integers(len(kinds), size=8 * count)]  # (8*count,) candidate kinds
    size = rng.uniform(0.0, 1.0, size=(8 * count, 3))  # (8*count, 3) uniform draws shaped per kind below
    footprint = np.select([kind == "tower", kind == "tree", kind == "block"], [0.008, 0.009, 0.017], 0.01)
    xz, keep = _place(rng, count, clear, clear_radius, footprint)
    kind, size = kind[keep], size[keep]
    colors = np.zeros((len(kind), 3), dtype=np.float32)  # (K, 3)
    for name, palette in OBJECTS[objects].items():
        colors[kind == name] = _jitter(rng, palette, int((kind == name).sum()))
    cyl, cyl_col, bands, box, box_col, sph, sph_col = [], [], [], [], [], [], []
    for (x, z), k, (u, v, w), color in zip(xz, kind, size, colors):
        if k in ("pillar", "tower"):
            radius, height, band = ((0.002 + 0.003 * u, 0.01 + 0.05 * v, 0.15) if k == "pillar"
                                    else (0.004 + 0.004 * u, 0.04 + 0.05 * v, 0.35))
            cyl.append((x, z, radius, height))
            cyl_col.append(color)
            bands.append(band)
        elif k == "tree":
            trunk_h, canopy_r = 0.008 + 0.017 * v, 0.004 + 0.005 * w
            cyl.append((x, z, 0.001 + 0.001 * u, trunk_h))
            cyl_col.append((0.36, 0.25, 0.15))
            bands.append(0.0)
            sph.append((x, -(trunk_h + 0.7 * canopy_r), z, canopy_r))
            sph_col.append(color)
        else:
            half = (0.003 + 0.005 * u) if k == "box" else (0.006 + 0.006 * u)
            height = (0.005 + 0.02 * v) if k == "box" else (0.015 + 0.03 * v)
            half_z = half * (0.6 + 0.8 * w)
            box.append((x - half, -height, z - half_z, x + half, 0.0, z + half_z))
            box_col.append(color)

    def arr(rows, width):
        return np.asarray(rows, dtype=np.float32).reshape(-1, width)

    harmonics = np.arange(1, 9)
    mountains = np.stack([0.05 * rng.uniform(0.2, 1.0, 8) / harmonics ** 0.7, harmonics,
                          rng.uniform(0, 2 * np.pi, 8)], axis=1)  # (8, 3)
    return Scene(ground, objects, time, arr(cyl, 4), arr(cyl_col, 3), np.asarray(bands, np.float32), arr(box, 6),
                 arr(box_col, 3), arr(sph, 4), arr(sph_col, 3),
                 rng.random((256, 256), dtype=np.float32), mountains.astype(np.float32))


# ----------------------------------------------------------------------------------------------- ray casting
def _noise(lattice, x, y):
    """Smooth value noise in [0, 1] at lattice coordinates (any shape, wraps every 256 cells)."""
    size = lattice.shape[0]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.int64) % size, y0.astype(np.int64) % size
    jx, jy = (ix + 1) % size, (iy + 1) % size
    top = lattice[iy, ix] * (1 - fx) + lattice[iy, jx] * fx
    bottom = lattice[jy, ix] * (1 - fx) + lattice[jy, jx] * fx
    return top * (1 - fy) + bottom * fy


def _fade(footprint, period):
    """Contrast of a texture of ``period`` seen with pixel ``footprint``: 1 when resolved, 0 near Nyquist."""
    return np.clip((0.5 * period - footprint) / (0.25 * period), 0.0, 1.0)


def _aabbs(scene):
    """World bounding boxes (K, 6) [min xyz, max xyz] of the cylinders, boxes and spheres, in that order."""
    cx, cz, r, h = scene.cylinders.T
    cyl = np.stack([cx - r, -h, cz - r, cx + r, np.zeros_like(h), cz + r], axis=1)
    sph = np.concatenate([scene.spheres[:, :3] - scene.spheres[:, 3:], scene.spheres[:, :3] + scene.spheres[:, 3:]], 1)
    return cyl, scene.boxes, sph


def _screen_boxes(aabb, rot, origin, focal_px, height, width):
    """Pixel rectangles (K, 4) [y0, y1, x0, x1) that contain each box's projection; empty when not in view."""
    corners = np.stack([aabb[:, [i, j, k]] for i in (0, 3) for j in (1, 4) for k in (2, 5)], axis=1)  # (K, 8, 3)
    cam = (corners - origin) @ rot  # (K, 8, 3) camera coordinates: x right, y down, z forward
    z = cam[..., 2]
    safe = np.maximum(z, 1e-9)
    u = focal_px * cam[..., 0] / safe + 0.5 * width  # (K, 8)
    v = focal_px * cam[..., 1] / safe + 0.5 * height
    rect = np.stack([np.floor(v.min(1)), np.ceil(v.max(1)) + 1, np.floor(u.min(1)), np.ceil(u.max(1)) + 1], 1)
    straddles = (z <= 1e-4).any(1)  # a corner at or behind the camera plane: projection unbounded, test all
    rect[straddles] = [0, height, 0, width]
    rect[(z <= 0).all(1)] = 0  # entirely behind the camera
    rect = np.clip(rect, 0, [height, height, width, width]).astype(np.int64)
    return rect


def _hit_cylinder(o, d, cx, cz, r, h):
    """One vertical cylinder standing on the ground: t (n,) (inf = miss), normal (n, 3)."""
    ox, oz = o[0] - cx, o[2] - cz
    a = d[:, 0] ** 2 + d[:, 2] ** 2  # (n,)
    b = d[:, 0] * ox + d[:, 2] * oz  # (n,) half of the quadratic's b
    c = ox * ox + oz * oz - r * r  # < 0: the camera is inside the cylinder's circle
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t_side = ((-b + root) if c < 0 else (-b - root)) / a
    y = o[1] + t_side * d[:, 1]
    t_side = np.where((disc > 0) & (t_side > EPS) & (y <= 0) & (y >= -h), t_side, np.inf)
    t_cap = np.full_like(t_side, np.inf)
    if o[1] < -h:  # the flat top is visible only from above
        t_cap = (-h - o[1]) / d[:, 1]
        qx, qz = ox + t_cap * d[:, 0], oz + t_cap * d[:, 2]
        t_cap = np.where((t_cap > EPS) & (qx * qx + qz * qz <= r * r), t_cap, np.inf)
    t = np.minimum(t_side, t_cap)
    hit = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d  # (n, 3)
    normal = np.stack([hit[:, 0] - cx, np.zeros_like(t), hit[:, 2] - cz], axis=1) / r
    normal[t_cap <= t_side] = (0.0, -1.0, 0.0)
    return t, normal


def _hit_sphere(o, d, center, r):
    oc = o - center  # (3,)
    b = d @ oc  # (n,)
    c = oc @ oc - r * r
    disc = b * b - c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = (-b + root) if c < 0 else (-b - root)
    t = np.where((disc > 0) & (t > EPS), t, np.inf)
    hit = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, (hit - center) / r


def _hit_box(o, d, box):
    """An axis-aligned box by the slab method."""
    t1 = (box[:3] - o) / d  # (n, 3)
    t2 = (box[3:] - o) / d
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near = np.maximum(np.maximum(near[:, 0], near[:, 1]), near[:, 2])  # (n,) faster than max over a 3-axis
    t_far = np.minimum(np.minimum(far[:, 0], far[:, 1]), far[:, 2])
    t = np.where(t_near > EPS, t_near, t_far)  # camera inside a box: exit wall
    t = np.where((t_near <= t_far) & (t_far > EPS), t, np.inf)
    rows, axis = np.arange(len(t)), near.argmax(1)  # the slab entered last is the face hit
    normal = np.zeros_like(d)
    normal[rows, axis] = -np.sign(d[rows, axis])
    return t, normal


def _rasterise(scene, rays, origin, rot, focal_px):
    """Depth (H,W), normal (H,W,3), base colour (H,W,3) and band contrast (H,W) of the nearest object per pixel.

    Each object is ray-tested only inside its screen rectangle: cost follows the pixels it covers, not P*K.
    """
    height, width = rays.shape[:2]
    depth = np.full((height, width), np.inf, np.float32)
    normal, base = np.zeros_like(rays), np.zeros_like(rays)
    bands = np.zeros((height, width), np.float32)
    cyl_box, box_box, sph_box = _aabbs(scene)
    jobs = [(_screen_boxes(cyl_box, rot, origin, focal_px, height, width), scene.cylinders, scene.cylinder_colors,
             scene.cylinder_bands, lambda d, p: _hit_cylinder(origin, d, *p)),
            (_screen_boxes(box_box, rot, origin, focal_px, height, width), scene.boxes, scene.box_colors,
             np.full(len(scene.boxes), 0.2, np.float32), lambda d, p: _hit_box(origin, d, p)),
            (_screen_boxes(sph_box, rot, origin, focal_px, height, width), scene.spheres, scene.sphere_colors,
             np.zeros(len(scene.spheres), np.float32), lambda d, p: _hit_sphere(origin, d, p[:3], p[3]))]
    for rects, params, colors, band, hit in jobs:
        for k in np.flatnonzero((rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])):
            y0, y1, x0, x1 = rects[k]
            t, n = hit(rays[y0:y1, x0:x1].reshape(-1, 3), params[k])  # (n,), (n, 3)
            view = depth[y0:y1, x0:x1]
            closer = (t < view.reshape(-1)).reshape(view.shape)  # (h, w)
            if closer.any():
                view[closer] = t[closer.reshape(-1)]
                normal[y0:y1, x0:x1][closer] = n[closer.reshape(-1)]
                base[y0:y1, x0:x1][closer] = colors[k]
                bands[y0:y1, x0:x1][closer] = band[k]
    return depth, normal, base, bands


def _sky(scene, style, o, d):
    """Colour of rays that hit nothing: gradient, sun, clouds at a layer 1 unit up, mountains at infinity."""
    up = -d[:, 1]  # (P,) sine of the ray's elevation
    sky = np.asarray(style["horizon"]) + (np.asarray(style["zenith"]) - style["horizon"]) * np.sqrt(
        np.clip(up, 0, 1))[:, None]
    height = np.maximum(up, 0.05)[:, None]
    cloud_xz = (o[[0, 2]] + d[:, [0, 2]] / height) / 0.4  # (P, 2) on a layer 1 unit above the camera
    n = 0.65 * _noise(scene.noise, cloud_xz[:, 0], cloud_xz[:, 1]) + 0.35 * _noise(
        scene.noise, 2.7 * cloud_xz[:, 0] + 31, 2.7 * cloud_xz[:, 1])
    alpha = np.clip((n - style["clouds"]) / 0.2, 0, 1) * np.clip(up / 0.25, 0, 1)
    sky = sky + (0.95 - sky) * (0.8 * alpha)[:, None]
    sun_cos = d @ _sun_direction(style)
    sky = sky + np.asarray(style["sun_color"]) * (style["sun"] * (
        (sun_cos > 0.9995) + 0.25 * np.clip((sun_cos - 0.97) / 0.03, 0, 1) ** 2))[:, None]
    azimuth, elevation = np.arctan2(d[:, 0], d[:, 2]), np.arcsin(np.clip(up, -1, 1))
    amp, freq, phase = scene.mountains.T
    ridge = 0.03 + (amp * np.sin(azimuth[:, None] * freq + phase)).sum(1)  # (P,) silhouette elevation (rad)
    mountain = (elevation < ridge) & (up >= 0)
    tone = 0.55 * np.asarray(style["horizon"]) + 0.45 * np.array([0.35, 0.42, 0.50])
    return np.where(mountain[:, None], tone + 0.12 * (elevation / ridge)[:, None], sky)


def _sun_direction(style):
    elev = np.radians(style["sun_elev"])
    return np.array([np.cos(elev) * np.sin(0.8), -np.sin(elev), np.cos(elev) * np.cos(0.8)])  # towards the sun


def _ground_color(scene, style, o, d, t, focal_px, shadows):
    spec = GROUNDS[scene.ground]
    hit = o + t[:, None] * d  # (P, 3)
    gx, gz, cell = hit[:, 0], hit[:, 2], spec["cell"]
    footprint = t / (focal_px * np.maximum(d[:, 1], 1e-6))  # world size of one pixel on the ground
    ix, iz = np.floor(gx / cell).astype(np.int64), np.floor(gz / cell).astype(np.int64)
    palette = np.asarray(spec["colors"], dtype=np.float32)  # (C, 3)
    if spec["pattern"] == "checker":
        index = (ix + iz) & 1
    else:
        index = (scene.noise[iz % 256, ix % 256] * len(palette)).astype(np.int64) % len(palette)
    color = palette.mean(0) + (palette[index] - palette.mean(0)) * _fade(footprint, cell)[:, None]
    patches = _noise(scene.noise, gx / GROUND_TEXTURE_SCALE + 97, gz / GROUND_TEXTURE_SCALE)
    grain = _noise(scene.noise, gx / 0.003, gz / 0.003) - 0.5
    color = color * (0.82 + 0.36 * patches + 0.25 * grain * _fade(footprint, 0.006))[:, None]
    centers, radii = shadows  # (S, 2), (S,)
    if len(radii):
        dist2 = ((gx[:, None] - centers[:, 0]) ** 2 + (gz[:, None] - centers[:, 1]) ** 2) / radii ** 2  # (P, S)
        shade = np.exp(-dist2.min(1)) * 0.5 * style["sun"] / 0.75
        color = color * (1 - np.clip(shade, 0, 0.6))[:, None]
    return color * (style["ambient"] + style["sun"] * -_sun_direction(style)[1] * 0.6)


def _object_color(scene, style, base, normal, hit, bands, footprint):
    """Lambert shading times a mottled surface (texture gives parallax cues) and optional horizontal bands."""
    light = style["ambient"] + style["sun"] * np.clip(normal @ _sun_direction(style), 0, 1)  # (P,)
    stripes = 1 - bands * (0.5 + 0.5 * np.sin(hit[:, 1] * (2 * np.pi / 0.006))) * _fade(footprint, 0.006)
    mottle = _noise(scene.noise, (hit[:, 0] + hit[:, 2]) / 0.002 + 51, hit[:, 1] / 0.002) - 0.5
    return base * (light * stripes * (1 + 0.45 * mottle * _fade(footprint, 0.004)))[:, None]


def _shadow_casters(scene, style):
    """Soft blob shadows: centres (S, 2) pushed away from the sun by the caster's height, radii (S,)."""
    away = -_sun_direction(style)[[0, 2]]
    away = away / max(np.linalg.norm(away), 1e-6) / np.tan(np.radians(max(style["sun_elev"], 10.0)))
    height = np.concatenate([scene.cylinders[:, 3], -scene.boxes[:, 1], -scene.spheres[:, 1]])
    base = np.concatenate([scene.cylinders[:, :2], 0.5 * (scene.boxes[:, [0, 2]] + scene.boxes[:, [3, 5]]),
                           scene.spheres[:, [0, 2]]])
    radii = np.concatenate([scene.cylinders[:, 2] * 1.5, 0.6 * (scene.boxes[:, 3] - scene.boxes[:, 0]) + 0.004,
                            scene.spheres[:, 3] * 1.2])
    return base + 0.5 * height[:, None] * away, radii.astype(np.float32)


def render_frame(scene: Scene, c2w: np.ndarray, height: int, width: int) -> np.ndarray:
    """Render one RGB uint8 frame ``(H, W, 3)`` from camera-to-world ``c2w`` (4x4, OpenCV camera axes)."""
    style = TIMES[scene.time]
    c2w = np.asarray(c2w, np.float64)
    rot, origin = c2w[:3, :3], c2w[:3, 3]
    focal_px = FOCAL * width
    u = (np.arange(width) + 0.5 - 0.5 * width) / focal_px
    v = (np.arange(height) + 0.5 - 0.5 * height) / focal_px
    rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), axis=-1)  # (H, W, 3) camera directions
    rays = ((rays / np.linalg.norm(rays, axis=-1, keepdims=True)) @ rot.T).astype(np.float32)  # (H, W, 3) world
    o = origin.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth, normal, base, bands = _rasterise(scene, rays, o, rot, focal_px)
        d, depth, normal, base, bands = rays.reshape(-1, 3), depth.reshape(-1), normal.reshape(-1, 3), \
            base.reshape(-1, 3), bands.reshape(-1)  # flatten to P pixels
        t_ground = np.where(d[:, 1] > EPS, -o[1] / d[:, 1], np.inf)  # (P,) the ground plane y = 0
        ground = t_ground < depth
        obj = np.isfinite(depth) & ~ground
        color = np.zeros_like(d)  # (P, 3)
        hit = o + depth[obj, None] * d[obj]
        color[obj] = _object_color(scene, style, base[obj], normal[obj], hit, bands[obj], depth[obj] / focal_px)
        depth[ground] = t_ground[ground]
        color[ground] = _ground_color(scene, style, o, d[ground], depth[ground], focal_px,
                                      _shadows(scene, style, rot, origin, focal_px, height, width))
        seen = obj | ground
        fog = 1 - np.exp(-depth[seen] / style["fog"])  # aerial perspective: far things fade into the horizon
        color[seen] = color[seen] + (np.asarray(style["horizon"]) - color[seen]) * fog[:, None]
        color[~seen] = _sky(scene, style, o, d[~seen])
    return (np.clip(color, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(height, width, 3)


def _shadows(scene, style, rot, origin, focal_px, height, width):
    """Shadow blobs that fall in view and near enough to span pixels: the (P, S) blob test is costly otherwise."""
    centers, radii = _shadow_casters(scene, style)
    ground_box = np.c_[centers[:, 0] - 2 * radii, np.zeros(len(radii)), centers[:, 1] - 2 * radii,
                       centers[:, 0] + 2 * radii, np.zeros(len(radii)), centers[:, 1] + 2 * radii]
    rects = _screen_boxes(ground_box, rot, origin, focal_px, height, width)
    keep = (rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2]) & (
        np.hypot(*(centers - origin[[0, 2]]).T) < 0.6)
    return centers[keep].astype(np.float32), radii[keep]
