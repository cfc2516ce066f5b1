"""Client input samples -> raw ``(k, 2, 8)`` actions (``models.action_format``) per latent-frame interval.

A client reports its input state (per action a flag 0/1 and a magnitude 0..1) at ~25 Hz and on every change.
The state holds from one sample to the next (and is released ``STALE_AFTER_S`` after the last sample, so a
vanished client stops flying). When the engine cuts a chunk of k action steps at time ``end``, the window
``[end - k * interval, end)`` is split into k intervals of ``interval = FRAMES_PER_LATENT / fps`` seconds (one
latent frame of playback), and for each action in each interval:

    binary     1 when the action was held for at least ``HOLD_FRACTION`` of the interval, else 0
    magnitude  full_scale[action] * (mean reported 0..1 magnitude while held), 0 when binary is 0

Two different actions at once (forward + yaw) are independent channels. Opposite actions held together
(``OPPOSITE_PAIRS``: forward+back, ...) cancel: both are 0 in that interval.

A causal world's block (``block_actions``) is cut just in time, when its frames are about to be needed, so it takes
the input as of its cut instead of an average over a past window: an action is on when it is held at the cut
(magnitude: its current one) or was pressed since the previous cut, even if released again (a tap shorter than a
block is not lost; magnitude: the largest reported while pressed). Every step of the block gets that state.

Full scale (raw units, the magnitude of a held key / a fully deflected stick) is
``models.action_format.full_scale_from_stats`` of the artifacts' ``action_stats`` (the evaluation suite commands
the same magnitudes).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Sequence

import numpy as np

from models.action_format import (
    ACTION_NAMES,
    DEFAULT_FULL_SCALE,
    FRAMES_PER_LATENT,
    NUM_ACTIONS,
    OPPOSITE_PAIRS,
    constant_actions,
)

HOLD_FRACTION = 0.5
STALE_AFTER_S = 1.0
MAX_SAMPLES = 1024


class InputTimeline:
    """Input samples of one flight and the conversion of a time window into ``(k, 2, 8)`` raw actions.

    ``add`` is called from the event loop and ``actions`` from the generation worker; a lock guards the samples.
    Client times (``t``, ms) are mapped to server time with the smallest observed (receive - send) offset.
    """

    def __init__(self, full_scale: Sequence[float], fps: float, clock=time.monotonic):
        if len(full_scale) != NUM_ACTIONS:
            raise ValueError(f"full_scale: expected {NUM_ACTIONS} values, got {len(full_scale)}")
        self.full_scale = np.asarray(full_scale, dtype=np.float64)  # (8,)
        self.interval_s = FRAMES_PER_LATENT / float(fps)
        self.clock = clock
        self._samples: deque = deque(maxlen=MAX_SAMPLES)  # (server_time, seq, flags (8,), mags (8,), arrival)
        self._offset = math.inf
        self._last_t = -math.inf
        self._count = 0  # samples added so far
        self._cut_count = 0  # samples added before the previous block cut (block_actions)
        self._lock = threading.Lock()

    def add(self, seq: int, t_ms: float, flags: Sequence[int], mags: Sequence[float], received: float = None) -> None:
        """Record one validated sample. ``t`` must not go backwards (ValueError naming ``t``)."""
        received = self.clock() if received is None else received
        t = t_ms / 1000.0
        with self._lock:
            if t < self._last_t:
                raise ValueError(f"t: went backwards ({t_ms} ms after {self._last_t * 1000:.0f} ms)")
            self._last_t = t
            self._offset = min(self._offset, received - t)
            flags_a = np.asarray(flags, dtype=np.float64)
            self._samples.append((t + self._offset, int(seq), flags_a, np.asarray(mags, dtype=np.float64) * flags_a,
                                  self._count))
            self._count += 1

    def actions(self, steps: int, end: float = None) -> tuple[np.ndarray, int]:
        """``(steps, 2, 8)`` raw float64 actions for the window ending at ``end`` (default now) and the seq of the
        last sample inside it (-1 if none)."""
        end = self.clock() if end is None else end
        edges = end - self.interval_s * np.arange(steps, -1, -1, dtype=np.float64)  # (k+1,)
        with self._lock:
            samples = list(self._samples)
            self._prune(edges[0])
        if not samples:
            return np.zeros((steps, 2, NUM_ACTIONS)), -1
        starts = np.array([s[0] for s in samples])  # (n,)
        stops = np.minimum(np.append(starts[1:], np.inf), starts + STALE_AFTER_S)  # (n,) state valid until
        flags = np.stack([s[2] for s in samples])  # (n, 8)
        mags = np.stack([s[3] for s in samples])  # (n, 8) 0..1, zero where not held
        lo, hi = edges[:-1, None], edges[1:, None]  # (k, 1)
        overlap = np.clip(np.minimum(hi, stops[None]) - np.maximum(lo, starts[None]), 0.0, None)  # (k, n) seconds
        held = overlap @ flags  # (k, 8) seconds held
        mag_time = overlap @ mags  # (k, 8) magnitude * seconds
        binary = held >= HOLD_FRACTION * self.interval_s  # (k, 8)
        for a, b in OPPOSITE_PAIRS:
            both = binary[:, a] & binary[:, b]
            binary[both, a] = binary[both, b] = False
        mean_mag = np.divide(mag_time, held, out=np.zeros_like(held), where=held > 0)  # (k, 8) 0..1
        raw = np.zeros((steps, 2, NUM_ACTIONS))
        raw[:, 0] = binary
        raw[:, 1] = np.where(binary, mean_mag * self.full_scale, 0.0)
        inside = [s[1] for s in samples if s[0] < end]
        return raw, (inside[-1] if inside else -1)

    def block_actions(self, steps: int, end: float = None) -> tuple[np.ndarray, int]:
        """A causal block's ``(steps, 2, 8)`` raw float64 actions cut at ``end`` (default now), every step the input
        state as of the cut plus the actions pressed since the previous cut (module docstring), and the seq of the
        last sample (-1 if none). "Since the previous cut" is by arrival: a sample received after it counts even
        when its client time maps to just before it."""
        end = self.clock() if end is None else end
        with self._lock:
            samples, since = list(self._samples), self._cut_count
            self._cut_count = self._count
            while len(self._samples) > 1 and self._samples[1][4] < self._count:  # keep the state at the cut
                self._samples.popleft()
        raw = np.zeros((steps, 2, NUM_ACTIONS))
        if not samples:
            return raw, -1
        before = [s for s in samples if s[4] < since]
        previous = before[-1][2] if before else np.zeros(NUM_ACTIONS)  # (8,) flags held at the previous cut
        pressed, pressed_mag = np.zeros(NUM_ACTIONS, bool), np.zeros(NUM_ACTIONS)  # (8,) each
        for _, _, flags, mags, _ in samples[len(before):]:  # the samples since the previous cut, in order
            pressed |= (flags > 0) & (previous == 0)
            pressed_mag = np.maximum(pressed_mag, mags)
            previous = flags
        last_t, last_seq, last_flags, last_mags, _ = samples[-1]
        held = (last_flags > 0) & (end - last_t < STALE_AFTER_S)  # (8,) a vanished client stops flying
        binary = held | pressed  # (8,)
        for a, b in OPPOSITE_PAIRS:
            if binary[a] and binary[b]:
                binary[a] = binary[b] = False
        magnitude = np.where(held, last_mags, pressed_mag)  # (8,) 0..1
        raw[:, 0] = binary
        raw[:, 1] = np.where(binary, magnitude * self.full_scale, 0.0)
        return raw, last_seq

    def _prune(self, window_start: float) -> None:
        """Drop samples that ended before ``window_start`` (keep the one whose state reaches into the window)."""
        while len(self._samples) > 1 and self._samples[1][0] <= window_start:
            self._samples.popleft()


def spec_name(name: str) -> str:
    """ACTION_NAMES entry -> its name in action specs ("Yaw Left" -> "yaw_left")."""
    return name.lower().replace(" ", "_")


def parse_action_spec(spec: str, full_scale: Sequence[float] = DEFAULT_FULL_SCALE) -> np.ndarray:
    """A timeline as text -> raw ``(T, 2, 8)``: comma-separated segments ``actions:steps``, where actions are
    ``+``-joined names (``forward``, ``yaw_left``, ..., or ``hover``), each optionally ``=fraction`` of full scale.
    Examples: ``"forward:20"``, ``"forward+yaw_left:10,hover:5"``, ``"forward=0.5:8"``."""
    names = {spec_name(n): n for n in ACTION_NAMES}
    segments = []
    for segment in (s.strip() for s in spec.split(",")):
        body, colon, count = segment.rpartition(":")
        if not colon or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"actions: segment {segment!r} is not 'name:steps' (e.g. forward:20)")
        magnitudes = {}
        for part in (p.strip().lower() for p in body.split("+")):
            name, _, fraction = part.partition("=")
            if name == "hover":
                continue
            if name not in names:
                raise ValueError(f"actions: unknown action {name!r}; expected hover or one of {sorted(names)}")
            try:
                value = float(fraction) if fraction else 1.0
            except ValueError:
                raise ValueError(f"actions: {part!r}: the fraction after '=' must be a number") from None
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"actions: {part!r}: the fraction must be in 0..1")
            magnitudes[names[name]] = value * full_scale[ACTION_NAMES.index(names[name])]
        segments.append(constant_actions(int(count), magnitudes).double().numpy())
    return np.concatenate(segments)  # (T, 2, 8)
