"""A small world's VAE as a filter: clips encoded and decoded by it, to measure what the VAE alone keeps of the
motion (``training.evaluate --synthetic N --through_vae DIR``, decoded by the VAE's decoder or, with ``--decoder
small``, by the world's small decoder). A world cannot follow actions better than its VAE can reproduce them: this is
the ceiling of its generated-suite accuracy.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from models.frames.small_decoder import decode_video
from models.small_world import load_small_world


def load_world_vae(world: str, device: str = "cpu"):
    """The ``WanVideoVAE38`` wrapper of the small world in folder ``world`` (float32)."""
    return load_small_world(world, device=device, torch_dtype=torch.float32).vae


def roundtrip(vae, frames: np.ndarray, small_decoder=None) -> np.ndarray:
    """(F, H, W, 3) uint8 -> the same clip encoded by ``vae`` and decoded by its decoder (or ``small_decoder``, which
    reads the same normalised latents), (F, H, W, 3) uint8."""
    device = next(vae.model.parameters()).device
    with torch.no_grad():
        x = torch.from_numpy(frames).to(device, torch.float32).permute(3, 0, 1, 2)[None] / 127.5 - 1  # (1, 3, F, H, W)
        z = vae.model.encode(x, vae.scale)  # (1, C, f, h, w) normalised
        y = vae.model.decode(z, vae.scale) if small_decoder is None else decode_video(small_decoder, z)
        y = y.clamp(-1, 1)  # (1, 3, F, H, W)
    return ((y[0].permute(1, 2, 3, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)  # (F, H, W, 3)


def roundtrip_clips(clips: list[dict], world: str, progress: bool = False, decoder: str = "wan") -> list[dict]:
    """The clips (``{name, frames, actions, prompt}``) with their frames passed through the world's VAE (its
    encoder, then its decoder or, ``decoder="small"``, its small decoder)."""
    pipe = load_small_world(world, torch_dtype=torch.float32)  # with its small decoder, when it has one
    pipe.use_decoder(decoder)  # ValueError naming decoder: a world without a small one
    vae, small = pipe.vae, pipe.small_decoder if decoder == "small" else None
    if progress:
        from tqdm import tqdm
        clips = tqdm(clips, desc="VAE round trip", unit="clip", file=sys.stderr)
    return [dict(clip, frames=roundtrip(vae, clip["frames"], small)) for clip in clips]


def roundtrip_label(world: str, decoder: str = "wan") -> tuple[str, str]:
    """The report entry's (label, description) of a round trip through ``world``'s VAE and ``decoder``."""
    if decoder == "wan":
        return "through VAE", f"the same flights through {world}'s VAE"
    return "through VAE + small decoder", f"the same flights through {world}'s VAE encoder and small decoder"
