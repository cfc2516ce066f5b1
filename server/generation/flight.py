"""One flight's state and the events a flight's connection receives; shared by the engine (scheduling), the delivery
thread and the connection.

What ``Flight.notify`` receives (``FlightEvent``): ``ChunkFrames``, ``MoreFrames``, and the protocol messages
``Queue``, ``Recording`` and ``Error``. ``notify`` is called from engine threads and must never block.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image

from server.inputs import InputTimeline
from server.media.recording import FlightRecorder
from server.protocol import Chunk, Error, Queue, Recording


@dataclass
class ChunkFrames:
    """A chunk's message and its first binary frame messages (all of them when the flight does not stream)."""
    chunk: Chunk
    frames: list[bytes]


@dataclass
class MoreFrames:
    """The next binary frame messages of streamed chunk ``index``, as the VAE decodes them."""
    index: int
    frames: list[bytes]


FlightEvent = Union[ChunkFrames, MoreFrames, Queue, Recording, Error]


@dataclass
class OpenChunk:
    """A chunk being generated. Opened by the worker; after that only the delivery thread touches it."""
    message: Chunk
    timings: dict  # from Generator.generate_stream; "denoised": perf_counter at the last denoising step
    messages: list[bytes] = field(default_factory=list)  # encoded, not handed over yet (non-streaming flights)
    frames: list[np.ndarray] = field(default_factory=list)  # decoded groups (n, H, W, 3), for the recording
    sent: int = 0  # frames handed to the connection


class Flight:
    """Engine-side state of one flight. ``notify(event)`` is called from engine threads with a
    ``server.media.delivery.FlightEvent`` and must not block."""

    def __init__(self, prompt: str, image: Image.Image, seed: int, steps: int, timeline: InputTimeline,
                 notify: Callable[[FlightEvent], None], meta: dict = None, stream: bool = False):
        self.id = secrets.token_urlsafe(12)
        self.stream = stream  # frame groups go out as decoded (ChunkFrames, then MoreFrames), not whole chunks
        self.prompt, self.seed, self.steps, self.timeline, self.notify = prompt, seed, steps, timeline, notify
        self.meta = meta or {}
        self.last_frame = image
        self.index = 0  # next chunk index
        self.frame_index = 0  # global index of the next frame sent
        self.play_end = 0.0  # estimated time the client runs out of frames
        self.stopped = False  # no more chunks
        self.paused = False  # no turns while its client shows no sign of playing (the connection sets it)
        self.closed = False  # connection gone: deliver nothing
        self.recorder: Optional[FlightRecorder] = None
        self.recording_failed = False
        self.open_chunk: Optional[OpenChunk] = None  # the chunk being generated, recorded as far as sent on stop
        self.world_stream = None  # a causal world's models.stream.WorldStream while the flight is active (engine)
        self.decoding = None  # with the decode lane: the Future of its last block's frames (engine)
