"""How far an autoregressive flight drifts from its first scene.

A world trained on chunk-length clips flies chunk after chunk, each chunk from the previous chunk's last frame (as
the server does). Its errors compound: the scene can fade into another one (a desert turns into a green field)
while the controls still work. From held-out rendered first frames, this generates ``--chunks`` chunks of a few
suite flights that keep the scene's palette (hover, yaw, forward: no pitch, which trades ground for sky) and
measures, chunk by chunk, the colour-histogram distance of the chunk's last frame to the first frame (0 = the same
colours, 1 = none in common). Hovering should also keep the picture itself: its PSNR to the first frame is reported.

    python -m training.rollout --world worlds/toy --chunks 16 --scenes 4 --out rollout.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from models.action_format import num_actions_for_frames

FLIGHTS = ("hover", "yaw_right", "forward")
HIST_BINS = 8  # per RGB channel


def palette_distance(a: np.ndarray, b: np.ndarray, bins: int = HIST_BINS) -> float:
    """Total-variation distance in [0, 1] between the RGB histograms of two (H, W, 3) uint8 frames."""
    def histogram(frame):
        index = (frame.astype(np.int64) * bins // 256).reshape(-1, 3)  # (H*W, 3) bin per channel
        flat = (index[:, 0] * bins + index[:, 1]) * bins + index[:, 2]  # (H*W,)
        return np.bincount(flat, minlength=bins ** 3) / len(flat)
    return float(0.5 * np.abs(histogram(a) - histogram(b)).sum())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def rollout(pipe, first: np.ndarray, prompt: str, actions: np.ndarray, chunk_frames: int, steps: int, seed: int,
            cfg_scale: float = 1.0, action_guidance: float = 1.0,
            action_guidance_rescale: float = 0.0) -> list[np.ndarray]:
    """The last frame (H, W, 3) uint8 of each chunk of a flight; ``actions`` (chunks * chunk_steps, 2, 8)."""
    from training.eval_suite import generate_clip
    chunk_steps = num_actions_for_frames(chunk_frames)
    image, lasts = first, []
    for number, start in enumerate(range(0, len(actions), chunk_steps)):
        frames = generate_clip(pipe, image, prompt, actions[start:start + chunk_steps], chunk_frames, steps,
                               seed + number, cfg_scale, action_guidance=action_guidance,
                               action_guidance_rescale=action_guidance_rescale)  # (F, H, W, 3)
        image = frames[-1]
        lasts.append(image)
    return lasts


def measure(pipe, hints: dict, chunks: int, scenes: int, seed: int = 0, flights=FLIGHTS) -> dict:
    """Per flight: the mean over scenes of each chunk's palette distance (and PSNR for hover) to the first frame."""
    from training.eval_suite import rendered_first_frames, suite_actions, suite_magnitudes
    h, w, f = hints["height"], hints["width"], hints["chunk_frames"]
    magnitudes = suite_magnitudes(pipe.action_stats)
    total_steps = chunks * num_actions_for_frames(f)
    result = {"chunks": chunks, "scenes": scenes, "seconds": chunks * (f - 1) / hints.get("fps", 8), "flights": {}}
    for flight in flights:
        distances, psnrs = [], []
        for _, first, prompt in rendered_first_frames(scenes, h, w, seed=seed):
            lasts = rollout(pipe, first, prompt, suite_actions(flight, total_steps, magnitudes), f,
                            hints.get("steps", 4), seed, hints.get("cfg_scale", 1.0),
                            hints.get("action_guidance", 1.0), hints.get("action_guidance_rescale", 0.0))
            distances.append([palette_distance(frame, first) for frame in lasts])
            if flight == "hover":  # only hovering should keep the first frame's picture
                psnrs.append([psnr(frame, first) for frame in lasts])
        entry = {"palette_distance": np.mean(distances, axis=0).round(4).tolist()}
        if psnrs:
            entry["psnr_db"] = np.mean(psnrs, axis=0).round(2).tolist()
        result["flights"][flight] = entry
    finals = [entry["palette_distance"][-1] for entry in result["flights"].values()]
    result["final_palette_distance"] = round(float(np.mean(finals)), 4)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True, help="a small world's folder (worlds/toy or a training.toyworld --out)")
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--scenes", type=int, default=4, help="held-out rendered first frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    if a.chunks < 1 or a.scenes < 1:
        p.error("--chunks and --scenes must be at least 1")
    from models.tiny import load_small_world
    from training.eval_suite import world_hints
    hints = world_hints(a.world)
    if not hints:
        p.error(f"--world: no serve.json in {a.world}")
    result = measure(load_small_world(a.world), hints, a.chunks, a.scenes, a.seed)
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
