"""A renderer-referenced action-following check for small worlds: ``python -m training.toyworld_eval --world DIR``.

A second view beside ``training.evaluate --generate --world`` (the standard suite read by optical flow). For each
held-out scene (seeds far from the training clips) and each of the 8 single actions held at the magnitude a held key
sends (the world's action_stats p90, ``training.eval_suite.suite_magnitudes``) over one chunk, the world generates a
chunk from the rendered first frame.
The synthetic renderer also renders that first frame flown under each of the 8 actions; the prediction is the action
whose rendering is nearest (MSE over frames 1..N-1, after subtracting frame 0 so colour bias cancels) to the
generated video. accuracy = fraction predicted == commanded (chance 1/8). flow_accuracy: ``training.flow_actions``
(optical flow, every frame pair) reads the commanded action in >= half the intervals and its opposite in none ("renderer" = the
rendered ground truth, the estimator's ceiling on these clips). Conditions:
    world       the trained world with the commanded actions
    shuffled    the trained world fed another action (a derangement), still scored against the commanded one
    random      the tiny random-weight preset (models.tiny) with its random controller
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image

from models.action_format import ACTION_NAMES, NUM_ACTIONS
from training.synthetic import DroneState, ROTATION_RANGE, TRANSLATION_RANGE, render_flight
from training.synthetic_scene import make_scene

SCENE_SEED_BASE = 7_000_000
SAMPLE_SEED_BASE = SCENE_SEED_BASE + 100  # web/samples/synthetic-*.png


def single_action(index: int, steps: int, magnitudes=None) -> np.ndarray:
    """Action ``index`` held for ``steps`` intervals at ``magnitudes[index]`` (default: the top of the ranges)."""
    actions = np.zeros((steps, 2, NUM_ACTIONS), dtype=np.float32)
    default = TRANSLATION_RANGE[1] if index < 4 else ROTATION_RANGE[1]
    actions[:, :, index] = (1.0, default if magnitudes is None else magnitudes[index])
    return actions


def references(scene_seed: int, frames: int, height: int, width: int, magnitudes=None):
    """(first frame uint8, prompt, renders (8, F, H, W, 3) float in [0, 1]) of one held-out scene."""
    rng = np.random.default_rng(scene_seed)
    start = DroneState(heading_deg=float(rng.uniform(-180, 180)))
    scene = make_scene(scene_seed, clear_xz=np.array([[start.x, start.z]]), clear_radius=0.06)
    steps = (frames - 1) // 4
    renders = np.stack([render_flight(single_action(a, steps, magnitudes), start, scene, height, width)[0]
                        for a in range(NUM_ACTIONS)])
    return renders[0, 0], scene.prompt, renders.astype(np.float32) / 255.0


def sample_scene(index: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """(first frame uint8, prompt) of bundled sample ``synthetic-{index + 1}`` (a held-out scene)."""
    first, prompt, _ = references(SAMPLE_SEED_BASE + index, 5, height, width)
    return first, prompt


def predict(video: np.ndarray, renders: np.ndarray) -> int:
    """video (F, H, W, 3) in [0, 1]; renders (8, F, H, W, 3): index of the nearest rendered flight by motion."""
    motion = video[1:] - video[:1]
    distances = [np.mean((motion - (r[1:] - r[:1])) ** 2) for r in renders]
    return int(np.argmin(distances))


def flow_hit(video: np.ndarray, commanded: int) -> bool:
    """``training.flow_actions`` reads the commanded action in at least half the intervals and its opposite in none."""
    from training.flow_actions import estimate_actions
    from training.synthetic import OPPOSITE
    from training.flow_actions import FlowSettings
    est = estimate_actions((video * 255).round().astype(np.uint8), FlowSettings(stride=1))  # (T, 2, 8)
    opposite = ACTION_NAMES.index(OPPOSITE[ACTION_NAMES[commanded]])
    return bool(est[:, 0, commanded].mean() >= 0.5 and est[:, 0, opposite].sum() == 0)


def generate(pipe, first, prompt, actions, frames, steps, seed=0) -> np.ndarray:
    h, w = first.shape[:2]
    video = pipe(prompt=prompt, input_image=Image.fromarray(first), height=h, width=w, num_frames=frames,
                 num_inference_steps=steps, seed=seed, cfg_scale=1.0, actions=actions, output_type="floatpoint",
                 tiled=False, progress_bar_cmd=lambda it: it)  # (1, 3, F, H, W) in [-1, 1]
    return ((video[0].permute(1, 2, 3, 0).float().numpy() + 1) / 2).clip(0, 1)


def evaluate(world: str, scenes: int = 5, steps: int | None = None, progress: bool = True) -> dict:
    from tqdm import tqdm
    from models.tiny import build_tiny_controller, build_tiny_pipeline, load_small_world
    hints = json.load(open(os.path.join(world, "serve.json")))
    h, w, frames, steps = hints["height"], hints["width"], hints["chunk_frames"], steps or hints["steps"]
    from training.eval_suite import suite_magnitudes
    pipes = {"world": load_small_world(world), "random": build_tiny_pipeline(0)}
    magnitudes = suite_magnitudes(pipes["world"].action_stats)  # what a held key sends in the server
    pipes["random"].set_action_controller(build_tiny_controller(0))
    derangement = [(a + 1 + a % 3) % NUM_ACTIONS for a in range(NUM_ACTIONS)]
    assert all(d != a for a, d in enumerate(derangement))
    hits = {"world": [], "shuffled": [], "random": []}
    flow_hits = {"world": [], "shuffled": [], "random": [], "renderer": []}
    confusion = np.zeros((NUM_ACTIONS, NUM_ACTIONS), dtype=int)
    bar = tqdm(total=scenes * NUM_ACTIONS * 3, desc="eval", disable=not progress)
    for s in range(scenes):
        first, prompt, renders = references(SCENE_SEED_BASE + s, frames, h, w, magnitudes)
        for a in range(NUM_ACTIONS):
            steps_t = (frames - 1) // 4
            flow_hits["renderer"].append(flow_hit(renders[a], a))
            for name, pipe, fed in (("world", pipes["world"], a), ("shuffled", pipes["world"], derangement[a]),
                                    ("random", pipes["random"], a)):
                with torch.no_grad():
                    video = generate(pipe, first, prompt, single_action(fed, steps_t, magnitudes), frames, steps,
                                     seed=s)
                guess = predict(video, renders)
                hits[name].append(guess == a)
                flow_hits[name].append(flow_hit(video, a))
                if name == "world":
                    confusion[a, guess] += 1
                bar.update(1)
    bar.close()
    return {"accuracy": {k: float(np.mean(v)) for k, v in hits.items()}, "chance": 1 / NUM_ACTIONS,
            "flow_accuracy": {k: float(np.mean(v)) for k, v in flow_hits.items()},
            "trials_per_condition": scenes * NUM_ACTIONS, "frames": frames, "height": h, "width": w,
            "steps": steps, "magnitudes": magnitudes.tolist(), "confusion_world": {ACTION_NAMES[i]: confusion[i].tolist() for i in range(NUM_ACTIONS)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.toyworld_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True)
    p.add_argument("--scenes", type=int, default=5)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--write_samples", default=None, metavar="DIR",
                   help="only write 3 held-out synthetic first frames (PNG, the world's resolution) into DIR")
    a = p.parse_args(argv)
    if a.write_samples:
        hints = json.load(open(os.path.join(a.world, "serve.json")))
        os.makedirs(a.write_samples, exist_ok=True)
        for s in range(3):
            first, prompt = sample_scene(s, hints["height"], hints["width"])
            Image.fromarray(first).save(os.path.join(a.write_samples, f"synthetic-{s + 1}.png"))
            print(f"synthetic-{s + 1}.png: {prompt}")
        return 0
    result = evaluate(a.world, a.scenes, a.steps)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
