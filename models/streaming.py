"""Streaming VAE decode: decode a chunk's latents group by group so its first frames can leave before the rest.

Axis legend: B batch (1), C latent channels (48), F latent frames, h/w latent grid, H/W pixels, n video frames.

Wan's VAE38 decoder is causal in time: the stock ``VideoVAE38_.decode`` already runs the decoder one latent frame
at a time, carrying a feature cache (the last frames of every causal conv) from one call to the next. Here we make
the same per-frame calls, in the same order and with the same inputs, but keep the cache ourselves and hand out the
frames after each group of latent frames. The arithmetic is the stock decode's, op for op, except the decoder's
input 1x1x1 conv (``conv2``), which the stock decode runs over all frames at once and we run frame by frame: on some
CPUs (AVX-512) its kernel sums the 48 channels in another order for another frame count. So the frames are
bit-identical however the latents are grouped (every host), and equal ``WanVideoVAE.decode`` (tiled or not) bit for
bit where that kernel does not depend on the frame count and within a few 1e-6 where it does (a few uint8 values
in 1e5 one grey level off). Latent frame 0 gives 1 video frame, every later one gives 4. The model's own cache
(``model._feat_map``) is never touched. ``StreamDecoder`` does the same for latents that arrive over time (a causal
world's stream): it never restarts.
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
    """One latent tile's decoder state: its own causal feature cache and how many latent frames it has decoded."""

    def __init__(self, vae, device):
        from diffsynth.models.wan_video_vae import count_conv3d
        self.vae, self.model, self.device = vae, vae.model, device
        self.cache = [None] * count_conv3d(vae.model.decoder)
        self.next_frame = 0

    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """The next latent frames (B, C, n, h, w) of this tile -> (B, 3, frames, H, W) pixels, not yet clamped."""
        from diffsynth.models.wan_video_vae import unpatchify
        model, z = self.model, latents.to(self.device)  # (B, C, n, h, w)
        # as VideoVAE38_.decode; WanVideoVAE38 always holds its scale as the tensors [mean, 1 / std]
        mean, inv_std = [s.to(dtype=z.dtype, device=z.device) for s in self.vae.scale]  # (C,) each
        z = z / inv_std.view(1, model.z_dim, 1, 1, 1) + mean.view(1, model.z_dim, 1, 1, 1)
        outs = []
        for i in range(z.shape[2]):
            # conv2 (1x1x1) frame by frame: a CPU kernel may sum its channels in another order for another frame
            # count, so a frame's pixels must not depend on how many frames arrive together
            x = model.conv2(z[:, :, i:i + 1])  # (B, C, 1, h, w)
            kwargs = {"first_chunk": True} if self.next_frame == 0 else {}
            out, self.cache, _ = model.decoder(x, feat_cache=self.cache, feat_idx=[0],
                                               **kwargs)  # (B, 12, 1|4, H/2, W/2)
            outs.append(out)
            self.next_frame += 1
        return unpatchify(torch.cat(outs, 2), patch_size=2)  # (B, 3, frames, H, W)


class StreamDecoder:
    """A decoder that never restarts: ``push`` latent frames as they are generated, get their pixels; every tile
    keeps its causal cache across calls (constant size: the last frames of each causal conv). The concatenated
    outputs equal ``WanVideoVAE.decode`` of all the latents at once, tiled or not (blending as ``tiled_decode``)."""

    def __init__(self, vae, device, tiled: bool = False, tile_size=(34, 34), tile_stride=(18, 16)):
        self.vae, self.device, self.tiled = vae, device, tiled
        self.tile_size, self.tile_stride = tile_size, tile_stride
        self.tiles, self.tasks = None, None

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, C, n, h, w) -> (1, 3, frames, H, W) in [-1, 1] (the first latent frame ever gives 1 frame, others 4)."""
        latents = latents.to("cpu")  # the stock decode moves latents to the CPU first, then each tile to the device
        if not self.tiled:
            self.tiles = self.tiles or [_TileDecoder(self.vae, self.device)]
            return self.tiles[0].push(latents).clamp_(-1, 1)  # (1, 3, frames, H, W)
        _, _, _, H, W = latents.shape
        up = self.vae.upsampling_factor
        if self.tasks is None:
            self.tasks = _tile_tasks(H, W, self.tile_size, self.tile_stride)
            self.tiles = [_TileDecoder(self.vae, self.device) for _ in self.tasks]
        border = ((self.tile_size[0] - self.tile_stride[0]) * up, (self.tile_size[1] - self.tile_stride[1]) * up)
        values, weight = None, None
        for (h0, h1, w0, w1), tile in zip(self.tasks, self.tiles):
            part = tile.push(latents[:, :, :, h0:h1, w0:w1]).to("cpu")  # (1, 3, n, Ht, Wt)
            if values is None:
                n = part.shape[2]
                values = torch.zeros((1, 3, n, H * up, W * up), dtype=latents.dtype)  # (1, 3, n, H, W)
                weight = torch.zeros((1, 1, n, H * up, W * up), dtype=latents.dtype)  # (1, 1, n, H, W)
            mask = self.vae.build_mask(part, is_bound=(h0 == 0, h1 >= H, w0 == 0, w1 >= W),
                                       border_width=border).to(dtype=latents.dtype)  # (1, 1, 1, Ht, Wt)
            ys, xs = slice(h0 * up, h0 * up + part.shape[3]), slice(w0 * up, w0 * up + part.shape[4])
            values[:, :, :, ys, xs] += part * mask
            weight[:, :, :, ys, xs] += mask
        return (values / weight).clamp_(-1, 1)  # (1, 3, n, H, W)

    @property
    def nbytes(self) -> int:
        """Bytes of the tiles' causal caches (each storage once)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for tile in (self.tiles or [])
                    for t in tile.cache if isinstance(t, torch.Tensor)}
        return sum(storages.values())


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
    yield from stream_groups(StreamDecoder(vae, device, tiled, tile_size, tile_stride), latents, group)


@torch.no_grad()
def stream_groups(decoder, latents: torch.Tensor, group: int = 1) -> Iterator[torch.Tensor]:
    """``stream_decode`` through any stream decoder (``push``: this one or ``models.frames``' small one)."""
    if latents.dim() != 5 or latents.shape[0] != 1:
        raise ValueError(f"latents: expected (1, C, F, h, w), got {tuple(latents.shape)}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group: expected a positive int, got {group!r}")
    start = 0
    for size in _group_sizes(latents.shape[2], group):
        yield decoder.push(latents[:, :, start:start + size])  # (1, 3, n, H, W)
        start += size


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
