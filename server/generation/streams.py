"""Causal worlds' flights (``models.stream``): when a flight's next block starts, what one stream costs, how many
flights fit.

    Pacer                just-in-time pacing: a flight is due when its client's playback left is down to the lead
                         (the measured time of a block to its first frames, the other flights' turns that may run
                         first, and ``--block_margin_s``), so its block takes input as late as possible
    measure_stream       one warm stream's memory (on CUDA the allocated-memory delta of opening it and making one
                         block, elsewhere its K/V cache + decoder state + prompt context) and one block's time
    derive_max_sessions  ``--max_sessions`` when not given: the streams that fit in half the free memory, at most
                         the flights one worker keeps in real time, at most ``MAX_SESSIONS_CAP``

A stream's memory is constant over a flight (a fixed K/V ring, the decoder's last frames per causal conv, no latents
kept), so one measurement at start holds for every flight; each active flight keeps its stream resident.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from models.action_format import FRAMES_PER_LATENT, NUM_ACTIONS
from server.settings import MAX_SESSIONS_CAP

log = logging.getLogger("wanfly.streams")
RECENT_BLOCKS = 8  # the pacer's estimate: the slowest of the last 8 blocks (~4 s of a toy-world flight)
MEMORY_SHARE = 0.5  # of the free memory, for streams (the rest: one block's activations, the allocator, the OS)


class Pacer:
    """How early a causal flight's next block starts: ``lead(others)`` seconds of client playback before it runs
    out. ``observe`` feeds each block's time to its first frames and its whole turn (with the cache write)."""

    def __init__(self, block_play_s: float, margin_s: float, recent: int = RECENT_BLOCKS):
        self.block_play_s, self.margin_s = block_play_s, margin_s
        self._first: deque[float] = deque(maxlen=recent)
        self._turn: deque[float] = deque(maxlen=recent)

    def observe(self, first_s: float, turn_s: float) -> None:
        self._first.append(first_s)
        self._turn.append(turn_s)

    def lead(self, others: int = 0) -> float:
        """Seconds of playback left when a flight is due; ``others``: turns (other flights, a job) that may run
        before it. Before any block is measured: one block of playback (the chunked worlds' rule)."""
        if not self._first:
            return self.block_play_s
        return max(self._first) + others * max(self._turn) + self.margin_s


@dataclass
class StreamCost:
    bytes: int  # one stream's resident memory
    source: str  # how it was measured
    block_s: float  # one warm block, the whole turn (denoise, decode, cache write)


def tensor_bytes(*objects) -> int:
    """Bytes of the distinct storages of the tensors in ``objects`` (lists and tuples walked; views counted once)."""
    import torch
    seen, total, todo = set(), 0, list(objects)
    while todo:
        item = todo.pop()
        if isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def stream_state_bytes(stream) -> int:
    """What a stream holds between blocks: its K/V cache, its decoder's causal caches, its prompt context."""
    return stream.cache.nbytes + tensor_bytes(stream.context) + stream.decoder.nbytes  # either decoder


def measure_stream(generator) -> StreamCost:
    """Open one stream on the (warm) world, make two blocks and measure it (module docstring); closed after."""
    import torch
    world = generator.world
    cuda = str(world.device).startswith("cuda")
    hover = np.zeros((world.causal_settings.block_frames, 2, NUM_ACTIONS))
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    stream = generator.open_stream(world.prompt, Image.new("RGB", (world.width, world.height)), 0, world.steps)
    try:
        stream.step(hover)  # the first block also decodes the first image
        started = time.perf_counter()
        stream.step(hover)
        if cuda:
            torch.cuda.synchronize()
        block_s = time.perf_counter() - started
        if cuda:
            nbytes, source = torch.cuda.memory_allocated() - before, "CUDA allocated-memory delta of one open stream"
        else:
            nbytes, source = stream_state_bytes(stream), "K/V cache + decoder state + prompt context"
    finally:
        stream.close()
    return StreamCost(bytes=int(nbytes), source=source, block_s=block_s)


def free_memory(device: str) -> Optional[int]:
    """Bytes free for streams on ``device``: CUDA free + cached-but-unused; elsewhere Linux's MemAvailable; None
    when unknown."""
    if str(device).startswith("cuda"):
        import torch
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def derive_max_sessions(cost: StreamCost, free: Optional[int], block_play_s: float,
                        cap: int = MAX_SESSIONS_CAP) -> tuple[int, str]:
    """(max_sessions, why) for a causal world: the streams that fit in ``MEMORY_SHARE`` of ``free`` bytes, at most
    the flights one worker keeps in real time (a block of ``block_play_s`` seconds of playback takes
    ``cost.block_s``), at most ``cap``; at least 1."""
    fit = cap if free is None else int(free * MEMORY_SHARE // max(cost.bytes, 1))
    realtime = max(1, math.floor(block_play_s / max(cost.block_s, 1e-9)))
    sessions = max(1, min(fit, realtime, cap))
    free_text = "unknown free memory" if free is None else f"{free / 2**30:.1f} GiB free"
    why = (f"{sessions} (one stream {cost.bytes / 2**20:.1f} MiB, {cost.source}; {free_text}: {fit} fit in "
           f"{MEMORY_SHARE:.0%}; a block {cost.block_s * 1000:.0f} ms for {block_play_s * 1000:.0f} ms of "
           f"playback: {realtime} in real time; cap {cap})")
    return sessions, why


def block_play_s(world) -> float:
    """Seconds of playback in one of a causal world's blocks."""
    return FRAMES_PER_LATENT * world.causal_settings.block_frames / world.fps
