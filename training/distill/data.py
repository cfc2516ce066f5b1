"""The distillation data: clips -> latents (the world's frozen encoder) -> the teacher's frames (its VAE decoder).

Axis legend: N clips, C latent channels (48), F latent frames, h/w latent grid, T video frames, H/W pixels.

Clips come from the project's synthetic flights (``training.data.synthetic``; the default for a small world or the
tiny preset, at the world's own flight speed) or from ``--data`` (a dataset CSV ``video,prompt,action`` or a folder
of mp4s; the first ``frames`` frames of each, centre-cropped and resized). Held-out clips never overlap the
training ones: synthetic flights from index ``HELD_OUT_START`` on (the toy recipe's held-out range), the last
``holdout`` videos of ``--data``. Each clip is encoded in one pass and decoded by the teacher in one continuous
decode (the causal decoder never restarts, as a stream decodes), so the targets are what a flight shows. Targets are
kept as uint8, as served. With ``generated`` (``--generated``), flights the world generates itself are added to the
training clips: a causal world's stream (its DiT and controller, its serve.json settings) from the first frame and
actions of synthetic flights of a range of their own (``GENERATED_START``), whose latents the teacher decodes in one
continuous decode: the latents the decoder meets in serving, which the encoder's alone do not cover.
``load_or_make`` caches everything in ``WORK/distill_data.pt`` while the source and the weights are the same.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from models.media import fit_image, iter_frames, video_to_frames
from models.serve_config import ServeConfig
from training.data.dataset import read_metadata, video_path
from training.data.synthetic import render_random_flight
from training.evaluation.rollout import stream_flight
from training.trainer.checkpoint import torch_save_atomic

HELD_OUT_START = 10 ** 6
GENERATED_START = 2 * 10 ** 6  # the generated flights' first frames and actions
DATA_FILE = "distill_data.pt"


@dataclass
class DistillData:
    latents: torch.Tensor  # (N, C, F, h, w) normalised, float32
    teacher: np.ndarray  # (N, T, H, W, 3) uint8: the teacher's frames of those latents
    held_latents: torch.Tensor  # (N_held, C, F_held, h, w)
    held_teacher: np.ndarray  # (N_held, T_held, H, W, 3)
    held_frames: np.ndarray  # (N_held, T_held, H, W, 3): the clips themselves (the VAE's ceiling, the picture)


def synthetic_clips(seed: int, start: int, count: int, frames: int, height: int, width: int, speed: float,
                    progress: bool = False) -> np.ndarray:
    """Synthetic flights ``start..start+count`` of ``seed``: (count, frames, H, W, 3) uint8."""
    from tqdm import tqdm
    indices = tqdm(range(start, start + count), desc="render", unit="clip", disable=not progress)
    return np.stack([render_random_flight(seed, i, frames, height, width, speed=speed)[0] for i in indices])


def data_videos(data: str) -> list[str]:
    """The mp4 paths of ``--data``: a CSV's ``video`` column (relative to its folder) or a folder's *.mp4."""
    if os.path.isdir(data):
        paths = sorted(glob.glob(os.path.join(data, "*.mp4")))
    elif os.path.isfile(data):
        base = os.path.dirname(os.path.abspath(data))
        paths = [video_path(base, row.video) for row in read_metadata(data, required=("video",))]
    else:
        raise ValueError(f"--data: {data!r} is neither a CSV file nor a folder of mp4s")
    if not paths:
        raise ValueError(f"--data: {data!r} holds no mp4 videos")
    return paths


def video_clip(path: str, frames: int, height: int, width: int) -> np.ndarray:
    """The first ``frames`` frames of a video, centre-cropped and resized: (frames, H, W, 3) uint8."""
    if not os.path.isfile(path):
        raise ValueError(f"--data: video {path} not found")
    clip = [fit_image(frame, width, height) for _, frame in iter_frames(path, set(range(frames)))]
    if len(clip) < frames:
        raise ValueError(f"--data: {path} has {len(clip)} frames, {frames} are needed (--frames/--eval_frames)")
    return np.stack(clip)


@torch.no_grad()
def encode_and_teach(pipe, clips: np.ndarray, tiled: bool = False, progress: bool = False
                     ) -> tuple[torch.Tensor, np.ndarray]:
    """Clips (N, T, H, W, 3) uint8 -> (latents (N, C, F, h, w) float32 on the CPU, teacher frames uint8)."""
    from tqdm import tqdm
    latents, teacher = [], []
    for clip in tqdm(clips, desc="encode + teacher decode", unit="clip", disable=not progress):
        video = torch.from_numpy(np.ascontiguousarray(clip)).to(pipe.torch_dtype).div(127.5).sub(1)  # (T, H, W, 3)
        video = video.permute(3, 0, 1, 2)  # (3, T, H, W)
        z = pipe.vae.encode([video], device=pipe.device, tiled=tiled).to(pipe.device, pipe.torch_dtype)
        decoded = pipe.vae.decode(z, device=pipe.device, tiled=tiled)  # (1, 3, T, H, W): one continuous decode
        latents.append(z.float().cpu())
        teacher.append(video_to_frames(decoded))
    return torch.cat(latents), np.stack(teacher)


@torch.no_grad()
def generate_and_teach(pipe, generated: dict, frames: int, height: int, width: int, tiled: bool = False,
                       progress: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """``generated["count"]`` flights of ``frames`` frames made by the world's own stream (``generated["stream"]``:
    serve.json's stream settings) -> (their latents (N, C, F, h, w) float32 on the CPU, the teacher's frames uint8).
    The teacher pipeline decodes with its VAE decoder, and a stream's frames are its decoder's one continuous decode
    of the stream's latents: they are the targets as they come."""
    from tqdm import tqdm
    serve = ServeConfig(height=height, width=width, generation="causal", **generated["stream"])
    latents, teacher = [], []
    for i in tqdm(range(generated["count"]), desc="generate + teacher decode", unit="flight", disable=not progress):
        video, _, actions, prompt = render_random_flight(generated["seed"], GENERATED_START + i, frames, height,
                                                         width, speed=generated["speed"])
        flight, z = stream_flight(pipe, serve, video[0], prompt, actions, generated["seed"] + i, keep_latents=True,
                                  tiled=tiled)  # (T, H, W, 3), (1, C, F, h, w)
        latents.append(z.float().cpu())
        teacher.append(flight)
    return torch.cat(latents), np.stack(teacher)


def weights_digest(module) -> str:
    """SHA-256 of a module's weights (names and float32 bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def load_or_make(work: str, pipe, source: dict, progress: bool = False) -> DistillData:
    """The data of ``source`` ({"kind": "synthetic" | "data", ...}, see ``make_clips``), cached in ``work``."""
    weights = {"vae": weights_digest(pipe.vae.model)}
    if source.get("generated"):  # the generated latents are the DiT's and the controller's too
        weights.update(dit=weights_digest(pipe.dit), controller=weights_digest(pipe.action_controller))
    key = json.dumps({**source, **weights}, sort_keys=True)
    path = os.path.join(work, DATA_FILE)
    if os.path.isfile(path):
        cached = torch.load(path, map_location="cpu", weights_only=False)
        if cached.get("key") == key:
            return cached["data"]
    train, held = make_clips(source, progress)
    latents, teacher = encode_and_teach(pipe, train, source.get("tiled", False), progress)
    if source.get("generated"):
        more_latents, more_teacher = generate_and_teach(pipe, source["generated"], source["frames"], source["height"],
                                                        source["width"], source.get("tiled", False), progress)
        latents, teacher = torch.cat([latents, more_latents]), np.concatenate([teacher, more_teacher])
    held_latents, held_teacher = encode_and_teach(pipe, held, source.get("tiled", False), progress)
    data = DistillData(latents, teacher, held_latents, held_teacher, held)
    os.makedirs(work, exist_ok=True)
    torch_save_atomic(path, {"key": key, "data": data})
    return data


def make_clips(source: dict, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(training clips (N, frames, H, W, 3), held-out clips (N_held, eval_frames, H, W, 3)) of a source."""
    s = source
    if s["kind"] == "synthetic":
        train = synthetic_clips(s["seed"], 0, s["clips"], s["frames"], s["height"], s["width"], s["speed"], progress)
        held = synthetic_clips(s["seed"], HELD_OUT_START, s["holdout"], s["eval_frames"], s["height"], s["width"],
                               s["speed"], progress)
        return train, held
    paths = data_videos(s["data"])
    if len(paths) <= s["holdout"]:
        raise ValueError(f"--data: {len(paths)} videos, but --holdout {s['holdout']} leaves none to train on")
    train_paths, held_paths = paths[:len(paths) - s["holdout"]][:s["clips"]], paths[len(paths) - s["holdout"]:]
    train = np.stack([video_clip(p, s["frames"], s["height"], s["width"]) for p in train_paths])
    held = np.stack([video_clip(p, s["eval_frames"], s["height"], s["width"]) for p in held_paths])
    return train, held
