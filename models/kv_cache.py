"""The K/V cache of a block-causal stream (``models.causal``): a fixed-size ring of past frames per DiT layer.

Axis legend: Y layers, B batch (branches), N tokens per frame, D hidden size, S slots (frames) = sink + window.

Per layer it holds the sink frame (the first image, when ``sink``) and the last ``window`` generated frames, keys
before RoPE (rotated at use: their positions shift as the window rolls) and values. The tensors are allocated once,
at their full size: memory and per-block work do not grow with the length of a flight. Writes of one clean pass are
staged per layer, then ``advance`` commits them: the oldest window frames make room and the new ones are appended.
"""
from __future__ import annotations

from typing import Callable

import torch


class KVCache:
    def __init__(self, window: int, sink: bool, layers: int, batch: int, tokens_per_frame: int, dim: int,
                 device, dtype):
        self.window, self.sink, self.tokens = window, sink, tokens_per_frame
        slots = int(sink) + window
        shape = (layers, batch, slots * tokens_per_frame, dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (Y, B, S*N, D) keys before RoPE
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (Y, B, S*N, D)
        self.sink_frames = 0  # 0 or 1: the sink slot is filled
        self.window_frames = 0  # 0..window
        self._staged: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._rotated: dict[int, torch.Tensor] = {}  # layer -> rotated keys of the current context

    # ---- reading ---------------------------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        """Frames in context now (sink + window)."""
        return self.sink_frames + self.window_frames

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def positions(self) -> tuple[int, ...]:
        """Temporal RoPE positions of the cached frames, in order: the sink at 0, then the window's frames."""
        return tuple(range(self.frames))

    def block_positions(self, frames: int) -> tuple[int, ...]:
        """Positions of the next block's ``frames`` frames: right after the cached ones."""
        return tuple(range(self.frames, self.frames + frames))

    def _used(self, tensor: torch.Tensor, layer: int) -> torch.Tensor:
        """The filled part of a layer: the sink slot (filled by the first block ever) then the window, in order."""
        return tensor[layer, :, :self.frames * self.tokens]  # (B, M, D)

    def context(self, layer: int, rotate: Callable[[torch.Tensor, tuple], torch.Tensor]):
        """(rotated keys (B, M, D), values (B, M, D)) of the cached frames, or (None, None) when empty.
        ``rotate(keys, positions)`` applies RoPE; its result is kept until the cache changes."""
        if self.frames == 0:
            return None, None
        if layer not in self._rotated:
            self._rotated[layer] = rotate(self._used(self.k, layer), self.positions())
        return self._rotated[layer], self._used(self.v, layer)

    # ---- writing ---------------------------------------------------------------------------------------------
    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stage one layer's keys (before RoPE) and values of the block being committed, (B, f*N, D) each."""
        self._staged[layer] = (k, v)

    def advance(self, frames: int) -> None:
        """Commit the staged block of ``frames`` frames: the first frame ever goes to the sink slot (with a sink),
        the rest into the window, dropping its oldest frames when full."""
        if len(self._staged) != self.k.shape[0]:
            raise RuntimeError(f"advance: {len(self._staged)} of {self.k.shape[0]} layers were written")
        n, window = self.tokens, self.window
        to_sink = 1 if self.sink and self.sink_frames == 0 else 0
        keep = min(frames - to_sink, window)  # the block's frames that enter the window (its newest)
        overflow = max(0, self.window_frames + keep - window)
        base = int(self.sink) * n
        for layer, (k, v) in self._staged.items():
            for cache, new in ((self.k, k), (self.v, v)):
                if to_sink:
                    cache[layer, :, :n] = new[:, :n]
                if overflow:  # roll the window left by the frames that leave it
                    kept = (self.window_frames - overflow) * n
                    cache[layer, :, base:base + kept] = cache[layer, :, base + overflow * n:
                                                              base + self.window_frames * n].clone()
                if keep:
                    start = base + (self.window_frames - overflow) * n
                    cache[layer, :, start:start + keep * n] = new[:, (frames - keep) * n:frames * n]
        self.sink_frames += to_sink
        self.window_frames = self.window_frames - overflow + keep
        self._staged.clear()
        self._rotated.clear()
