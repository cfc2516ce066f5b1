"""What a decoder costs per latent frame: parameters and FLOPs (torch's FLOP counter on the meta device: nothing
is allocated, so the full-size Wan decoder is counted on any machine in a second).

Axis legend: C latent channels (48), h/w latent grid. FLOPs count multiply and add as 2 (torch's convention);
"per latent frame" is a latent frame after the first (4 video frames), the first (1 frame) is given apart.
"""
from __future__ import annotations

import torch

from .small_decoder import SmallDecoder, SmallDecoderConfig


def _count(step, frames: int = 2) -> list[int]:
    """FLOPs of ``step(i)`` for latent frames i = 0..frames-1 (each call continues the previous one's cache)."""
    from torch.utils.flop_counter import FlopCounterMode
    out = []
    for i in range(frames):
        with FlopCounterMode(display=False) as counter:
            step(i)
        out.append(int(counter.get_total_flops()))
    return out


def small_decoder_cost(config: SmallDecoderConfig, h: int, w: int) -> dict:
    """{"params", "flops_first_latent_frame", "flops_per_latent_frame"} of a small decoder on an (h, w) grid."""
    with torch.device("meta"):
        decoder = SmallDecoder(config)
    state = [None]

    def step(i):
        _, state[0] = decoder(torch.zeros(1, config.z_dim, 1, h, w, device="meta"), state[0])

    first, later = _count(step)
    return {"params": sum(p.numel() for p in decoder.parameters()), "flops_first_latent_frame": first,
            "flops_per_latent_frame": later}


def wan_decoder_cost(model, h: int, w: int) -> dict:
    """The same for a Wan2.2 VAE38 decoder (``conv2`` + ``decoder`` of ``model``, a ``VideoVAE38_``), rebuilt
    on the meta device with its widths."""
    from diffsynth.models.wan_video_vae import VideoVAE38_, count_conv3d
    z_dim, dec_dim = model.z_dim, model.decoder.dim
    with torch.device("meta"):
        meta = VideoVAE38_(dim=8, z_dim=z_dim, dec_dim=dec_dim)
    cache = [None] * count_conv3d(meta.decoder)

    def step(i):
        x = meta.conv2(torch.zeros(1, z_dim, 1, h, w, device="meta"))
        meta.decoder(x, feat_cache=cache, feat_idx=[0], **({"first_chunk": True} if i == 0 else {}))

    first, later = _count(step)
    params = sum(p.numel() for part in (meta.conv2, meta.decoder) for p in part.parameters())
    return {"params": params, "flops_first_latent_frame": first, "flops_per_latent_frame": later}
