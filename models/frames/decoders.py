"""Which decoder makes a pipeline's frames: the world's Wan VAE decoder (``"wan"``) or its small decoder
(``"small"``, ``models.frames.small_decoder``), for every path: one-shot calls (``pipe(...)``, the chunked worlds
and jobs), streamed chunk decodes (``pipe.stream_decode``) and streams (``models.stream.WorldStream``).

Axis legend: B batch (1), C latent channels (48), F latent frames, h/w latent grid, H/W pixels.

Both decoders read the same normalised latents and give the same frame count (latent frame 0 -> 1 frame, later
ones -> 4 each). A stream decoder is anything with ``push(latents (1, C, n, h, w)) -> (1, 3, frames, H, W)`` in
[-1, 1] and ``nbytes`` (its state): ``models.streaming.StreamDecoder`` or ``SmallStreamDecoder``. The choice is
``pipe.decoder`` (``use_decoder``); the small decoder is ``pipe.small_decoder`` (``attach_small_decoder``), on the
pipeline's device or on ``pipe.decode_device`` (``set_decode_device``: a second GPU).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from ..options import DECODERS, check_decoder
from ..streaming import StreamDecoder
from .small_decoder import SmallDecoder, SmallStreamDecoder, decode_video


def attach_small_decoder(pipe, decoder: SmallDecoder) -> None:
    """Give ``pipe`` a small decoder (moved to its decode device and dtype); ValueError when it does not read the
    world's latents (channels, spatial compression)."""
    vae = pipe.vae
    z_dim, spatial = getattr(vae, "z_dim", None), getattr(vae, "upsampling_factor", None)
    config = decoder.config
    if z_dim is not None and config.z_dim != z_dim:
        raise ValueError(f"small decoder: it reads {config.z_dim}-channel latents, the world's VAE makes {z_dim}")
    if spatial is not None and config.spatial != spatial:
        raise ValueError(f"small decoder: it upsamples {config.spatial}x, the world's VAE {spatial}x")
    device = getattr(pipe, "decode_device", None) or pipe.device
    pipe.small_decoder = decoder.to(device=device, dtype=pipe.torch_dtype).eval().requires_grad_(False)


def use_decoder(pipe, name: str) -> None:
    """Make ``name`` ("wan" | "small") the pipeline's decoder; ValueError naming ``decoder`` otherwise."""
    check_decoder(name)
    if name == "small" and getattr(pipe, "small_decoder", None) is None:
        raise ValueError("decoder: 'small' needs a small decoder, and this world has none (a world folder keeps "
                         "it in small_decoder/; make one with python -m training.distill_decoder)")
    pipe.decoder = name


def set_decode_device(pipe, device) -> None:
    """Decode on ``device`` (e.g. "cuda:1"), apart from the denoising: the small decoder moves there; the Wan
    decoder is copied there once (the encoder stays with the pipeline). None = the pipeline's device."""
    device = None if device is None else str(torch.device(device))
    pipe.decode_device = device
    pipe.decode_vae = None
    if getattr(pipe, "small_decoder", None) is not None:
        pipe.small_decoder.to(device or pipe.device)
    if device is not None and device != str(torch.device(pipe.device)):
        pipe.decode_vae = copy.deepcopy(pipe.vae).to(device)


def decoder_name(pipe) -> str:
    return getattr(pipe, "decoder", DECODERS[0])


def new_stream_decoder(pipe, tiled: bool = False, tile_size=(34, 34), tile_stride=(18, 16)):
    """A fresh stream decoder of the pipeline's chosen decoder, on its decode device."""
    device = getattr(pipe, "decode_device", None) or pipe.device
    if decoder_name(pipe) == "small":
        return SmallStreamDecoder(pipe.small_decoder, device)
    vae = getattr(pipe, "decode_vae", None) or pipe.vae
    return StreamDecoder(vae, device, tiled, tile_size, tile_stride)


@contextmanager
def decoding_with(pipe):
    """Within this block the stock ``pipe(...)``'s final ``vae.decode`` is the chosen decoder's one-shot decode
    (an instance attribute shadows the method; the server's one generation thread)."""
    vae = pipe.vae
    if "decode" in vars(vae) or (decoder_name(pipe) == "wan" and getattr(pipe, "decode_vae", None) is None):
        yield  # already shadowed (``models.streaming.capture_latents`` keeps the latents), or the stock decode
        return
    device = getattr(pipe, "decode_device", None) or pipe.device

    def decode(latents, *args, tiled=False, tile_size=(34, 34), tile_stride=(18, 16), **kwargs):
        if decoder_name(pipe) == "small":
            return decode_video(pipe.small_decoder, latents)  # (B, 3, T, H, W)
        return pipe.decode_vae.decode(latents, device=device, tiled=tiled, tile_size=tile_size,
                                      tile_stride=tile_stride)

    vae.decode = decode
    try:
        yield
    finally:
        del vae.decode
