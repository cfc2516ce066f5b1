"""Streaming VAE decode: decode a chunk's latents group by group so its first frames can leave before the rest.

Axis legend: B batch (1), C latent channels (48), F latent frames, h/w latent grid, H/W pixels, n video frames.

Wan's VAE38 decoder is causal in time: the stock ``VideoVAE38_.decode`` already runs the decoder one latent frame
at a time, carrying a feature cache (the last frames of every causal conv) from one call to the next. Here we make
the same per-frame calls, in the same order and with the same inputs, but keep the cache ourselves and hand out the
frames after each group of latent frames. The arithmetic is therefore the stock decode's, op for op, and the
concatenated groups are bit-identical to ``WanVideoVAE.decode`` (tiled or not). Latent frame 0 gives 1 video frame,
every later one gives 4. The model's own cache (``model._feat_map``) is never touched.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def _tile_tasks(H: int, W: int, tile_size, tile_stride) -> list[tuple[int, int, int, int]]:
    """The latent tiles (h0, h1, w0, w1) of ``WanVideoVAE.tiled_decode``, in its order."""
    size_h, size_w = tile_size
    stride_h, stride_w = tile_stride
    tasks = []
    for h in range(0, H, stride_h):
        if h - stride_h >= 0 and h - stride_h + size_h >= H:
            continue
        for w in range(0, W, stride_w):
            if w - stride_w >= 0 and w - stride_w + size_w >= W:
                continue
            tasks.append((h, h + size_h, w, w + size_w))
    return tasks


class _TileDecoder:
    """One latent tile's decoder state: its scaled, conv2-projected latents and its own causal feature cache."""

    def __init__(self, vae, latents: torch.Tensor, device):
        from diffsynth.models.wan_video_vae import count_conv3d
        model = vae.model
        z = latents.to(device)  # (B, C, F, h, w)
        scale = vae.scale
        if isinstance(scale[0], torch.Tensor):  # as VideoVAE38_.decode
            mean, inv_std = [s.to(dtype=z.dtype, device=z.device) for s in scale]
            z = z / inv_std.view(1, model.z_dim, 1, 1, 1) + mean.view(1, model.z_dim, 1, 1, 1)
        else:
            scale = scale.to(dtype=z.dtype, device=z.device)
            z = z / scale[1] + scale[0]
        self.model = model
        self.x = model.conv2(z)  # (B, C, F, h, w): a 1x1x1 conv over the whole tile, as the stock decode
        self.cache = [None] * count_conv3d(model.decoder)
        self.next_frame = 0

    def decode(self, num_latent_frames: int) -> torch.Tensor:
        """The next ``num_latent_frames`` latent frames -> (B, 3, n, H, W) pixels, not yet clamped."""
        from diffsynth.models.wan_video_vae import unpatchify
        outs = []
        for i in range(self.next_frame, self.next_frame + num_latent_frames):
            kwargs = {"first_chunk": True} if i == 0 else {}
            out, self.cache, _ = self.model.decoder(self.x[:, :, i:i + 1], feat_cache=self.cache, feat_idx=[0],
                                                    **kwargs)  # (B, 12, 1|4, H/2, W/2)
            outs.append(out)
        self.next_frame += num_latent_frames
        return unpatchify(torch.cat(outs, 2), patch_size=2)  # (B, 3, n, H, W)


def _group_sizes(num_latent_frames: int, group: int) -> list[int]:
    """Latent frame 0 alone (it is the first image, out at once), then groups of ``group`` latent frames."""
    sizes, left = [1], num_latent_frames - 1
    while left > 0:
        sizes.append(min(group, left))
        left -= sizes[-1]
    return sizes


@torch.no_grad()  # the decorator form wraps each step of the generator, so the caller's grad mode is untouched
def stream_decode(vae, latents: torch.Tensor, device, tiled: bool = False, tile_size=(34, 34),
                  tile_stride=(18, 16), group: int = 1) -> Iterator[torch.Tensor]:
    """Yield the decoded video of ``latents`` (1, C, F, h, w) as (1, 3, n, H, W) groups in [-1, 1].

    Arguments mean what they mean for ``WanVideoVAE.decode``; ``group`` is latent frames per yielded group after
    the first (latent frame 0 is always yielded alone). Concatenating the groups along dim 2 equals the stock decode.
    """
    if latents.dim() != 5 or latents.shape[0] != 1:
        raise ValueError(f"latents: expected (1, C, F, h, w), got {tuple(latents.shape)}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group: expected a positive int, got {group!r}")
    latents = latents.to("cpu")  # the stock decode moves latents to the CPU first, then each tile to the device
    if not tiled:
        tile = _TileDecoder(vae, latents, device)
        for size in _group_sizes(latents.shape[2], group):
            yield tile.decode(size).clamp_(-1, 1)  # (1, 3, n, H, W)
        return
    yield from _stream_tiled(vae, latents, device, tile_size, tile_stride, group)


def _stream_tiled(vae, latents, device, tile_size, tile_stride, group) -> Iterator[torch.Tensor]:
    """The tiled decode, group by group: every tile keeps its own cache; blending as ``tiled_decode``."""
    _, _, F, H, W = latents.shape
    up = vae.upsampling_factor
    tasks = _tile_tasks(H, W, tile_size, tile_stride)
    border = ((tile_size[0] - tile_stride[0]) * up, (tile_size[1] - tile_stride[1]) * up)
    tiles = [_TileDecoder(vae, latents[:, :, :, h0:h1, w0:w1], device) for h0, h1, w0, w1 in tasks]
    for size in _group_sizes(F, group):
        values, weight = None, None
        for (h0, h1, w0, w1), tile in zip(tasks, tiles):
            part = tile.decode(size).to("cpu")  # (1, 3, n, Ht, Wt)
            if values is None:
                n = part.shape[2]
                values = torch.zeros((1, 3, n, H * up, W * up), dtype=latents.dtype)  # (1, 3, n, H, W)
                weight = torch.zeros((1, 1, n, H * up, W * up), dtype=latents.dtype)  # (1, 1, n, H, W)
            mask = vae.build_mask(part, is_bound=(h0 == 0, h1 >= H, w0 == 0, w1 >= W),
                                  border_width=border).to(dtype=latents.dtype)  # (1, 1, 1, Ht, Wt)
            ys, xs = slice(h0 * up, h0 * up + part.shape[3]), slice(w0 * up, w0 * up + part.shape[4])
            values[:, :, :, ys, xs] += part * mask
            weight[:, :, :, ys, xs] += mask
        yield (values / weight).clamp_(-1, 1)  # (1, 3, n, H, W)


@contextmanager
def capture_latents(pipe):
    """Within this block, ``pipe(...)`` returns its final latents (1, C, F, h, w) instead of decoding them.

    The stock ``__call__`` ends with ``pipe.vae.decode(latents, ...)``; an instance attribute shadows that method
    for the duration (single-threaded use: the server's one generation thread)."""
    vae = pipe.vae

    def keep(latents, *args, **kwargs):
        return latents

    vae.decode = keep
    try:
        yield
    finally:
        del vae.decode
