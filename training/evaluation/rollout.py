"""How far an autoregressive flight drifts from its first scene.

A world trained on chunk-length clips flies chunk after chunk, each chunk from the previous chunk's last frame (as
the server does). Its errors compound: the scene can fade into another one (a desert turns into a green field)
while the controls still work. From held-out rendered first frames, this generates ``--chunks`` chunks of a few
suite flights that keep the scene's palette (hover, yaw, forward: no pitch, which trades ground for sky) and
measures, chunk by chunk, the colour-histogram distance of the chunk's last frame to the first frame (0 = the same
colours, 1 = none in common). Hovering should also keep the picture itself: its PSNR to the first frame is reported.
The command is ``python -m training.rollout``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from models.action_format import FRAMES_PER_LATENT, num_actions_for_frames
from models.options import CausalSettings
from models.serve_config import ServeConfig
from training.evaluation.sources import rendered_first_frames
from training.evaluation.suite import generate_clip, stream_clip, suite_actions, suite_magnitudes

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


def chunked_flight(pipe, first: np.ndarray, prompt: str, actions: np.ndarray, chunk_frames: int, steps: int,
                   seed: int, cfg_scale: float = 1.0, action_guidance: float = 1.0,
                   action_guidance_rescale: float = 0.0) -> Iterator[np.ndarray]:
    """Each chunk's frames ``(4k+1, H, W, 3)`` uint8 of a flight made as the server makes it: chunk ``n`` is a
    generation from the previous chunk's last frame with seed ``seed + n`` (``actions`` (T, 2, 8); the last chunk
    is shorter when T is not a whole number of chunks)."""
    chunk_steps = num_actions_for_frames(chunk_frames)
    image = first
    for number, start in enumerate(range(0, len(actions), chunk_steps)):
        part = actions[start:start + chunk_steps]
        frames = generate_clip(pipe, image, prompt, part, 4 * len(part) + 1, steps, seed + number, cfg_scale,
                               action_guidance=action_guidance,
                               action_guidance_rescale=action_guidance_rescale)  # (4k+1, H, W, 3)
        image = frames[-1]
        yield frames


def stream_flight(pipe, serve: ServeConfig, first: np.ndarray, prompt: str, actions: np.ndarray, seed: int,
                  keep_latents: bool = False, tiled: bool = False):
    """A causal world's flight of ``actions`` (T, 2, 8) as one stream with ``serve``'s settings: its frames
    ``(4T+1, H, W, 3)`` uint8 and, with ``keep_latents``, its latents ``(1, C, T+1, h, w)`` (else None). The last block
    is filled up with hovering when T is not a whole number of blocks; the filling's frames and latents are dropped."""
    b = serve.block_frames
    padded = np.concatenate([actions, np.zeros((-len(actions) % b, *actions.shape[1:]), actions.dtype)])
    stream = pipe.open_stream(first, prompt, seed=seed, steps=serve.steps, block_frames=b, window=serve.window,
                              sink=serve.sink, height=serve.height, width=serve.width, cfg_scale=serve.cfg_scale,
                              action_guidance=serve.action_guidance,
                              action_guidance_rescale=serve.action_guidance_rescale, tiled=tiled,
                              keep_latents=keep_latents)
    try:
        frames = np.concatenate([stream.step(padded[t:t + b]) for t in range(0, len(padded), b)])
        latents = stream.latents[:, :, :len(actions) + 1] if keep_latents else None
    finally:
        stream.close()
    return frames[:FRAMES_PER_LATENT * len(actions) + 1], latents


def rollout(pipe, first: np.ndarray, prompt: str, actions: np.ndarray, chunk_frames: int, steps: int, seed: int,
            cfg_scale: float = 1.0, action_guidance: float = 1.0, action_guidance_rescale: float = 0.0,
            causal: CausalSettings | None = None) -> list[np.ndarray]:
    """The last frame (H, W, 3) uint8 of each chunk of a flight; ``actions`` (chunks * chunk_steps, 2, 8). A causal
    world flies one stream, a chunk being one block (``chunk_frames`` = 1 + 4 x block_frames)."""
    if causal is not None:
        chunk_steps = num_actions_for_frames(chunk_frames)
        frames = stream_clip(pipe, first, prompt, actions, steps, seed, causal, action_guidance=action_guidance,
                             action_guidance_rescale=action_guidance_rescale)  # (4T + 1, H, W, 3)
        return [frames[4 * end] for end in range(chunk_steps, len(actions) + 1, chunk_steps)]
    return [frames[-1] for frames in chunked_flight(pipe, first, prompt, actions, chunk_frames, steps, seed,
                                                    cfg_scale, action_guidance, action_guidance_rescale)]


def measure(pipe, serve: ServeConfig, chunks: int, scenes: int, seed: int = 0, flights=FLIGHTS) -> dict:
    """Per flight: the mean over scenes of each chunk's palette distance (and PSNR for hover) to the first frame;
    generated with the world's serving settings (``serve``)."""
    h, w, f = serve.height, serve.width, serve.chunk_frames
    magnitudes = suite_magnitudes(pipe.action_stats)
    total_steps = chunks * num_actions_for_frames(f)
    result = {"chunks": chunks, "scenes": scenes, "seconds": chunks * (f - 1) / serve.fps, "flights": {}}
    for flight in flights:
        distances, psnrs = [], []
        for _, first, prompt in rendered_first_frames(scenes, h, w, seed=seed):
            lasts = rollout(pipe, first, prompt, suite_actions(flight, total_steps, magnitudes), f, serve.steps,
                            seed, serve.cfg_scale, serve.action_guidance, serve.action_guidance_rescale,
                            serve.causal_settings() if serve.generation == "causal" else None)
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
