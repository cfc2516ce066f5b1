"""The delivery thread: a flight's decoded frames -> JPEG binary frame messages -> its connection, and its recording.

The engine's worker hands each decoded frame group to ``Delivery.group`` at once, so JPEG encoding overlaps the VAE
decode; the worker never waits for it. A causal block decoded on its stream's lane (``--decode_overlap``) comes as a
Future (``Delivery.decoded_block``): this thread waits for it in turn while the worker makes the next block. A
streaming flight gets each group on the wire at once (``ChunkFrames`` with the chunk's message and first group, then
``MoreFrames`` per later group); otherwise the chunk goes out whole at ``Delivery.close_chunk``. Closed chunks are
appended to the flight's recording (``FlightRecorder``); ``Delivery.finish`` closes it and offers the ``Recording``
message. One thread runs all of it in order, so a chunk's
frames, its recording and the flight's end never overtake each other.

What a flight's ``notify`` receives (``FlightEvent``): ``ChunkFrames``, ``MoreFrames``, and the protocol messages
``Queue``, ``Recording`` and ``Error`` (the last two from the engine's worker). ``notify`` must never block.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np

from server.generation.flight import ChunkFrames, Flight, MoreFrames, OpenChunk
from server.media.images import encode_jpegs, resolve_jpeg_device
from server.media.recording import FileStore, FlightRecorder
from server.metrics import Metrics
from server.protocol import Chunk, Recording, frame_message

log = logging.getLogger("wanfly.delivery")


class Delivery:
    """One delivery thread per engine. ``lock`` is the engine's: it guards ``flight.open_chunk``, which the worker
    sets when it opens the next chunk."""

    def __init__(self, world, settings, metrics: Metrics, recordings: FileStore, lock: threading.Condition):
        self.world, self.settings, self.metrics, self.recordings, self.lock = world, settings, metrics, recordings, lock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wanfly-delivery")
        self.jpeg_device = resolve_jpeg_device(getattr(settings, "jpeg_device", "cpu"), getattr(world, "device", "cpu"))

    # ---- called from the worker (queue work, never wait) ------------------------------------------------------
    def group(self, flight: Flight, chunk: OpenChunk, frames: np.ndarray) -> None:
        """Frames ``(n, H, W, 3)`` of ``chunk`` as decoded."""
        self._thread.submit(self._deliver_group, flight, chunk, frames)

    def decoded_block(self, flight: Flight, chunk: OpenChunk, groups: Future, decoded: Callable) -> None:
        """A causal block whose decode runs on its stream's lane (``WorldStream.step_async``): here, in order with
        the rest, its groups once decoded (``groups``: a Future of the list), as ``group`` delivers them, after
        ``decoded(error)`` (None, or the decode's exception: then nothing is delivered; the engine reports it)."""
        self._thread.submit(self._deliver_block, flight, chunk, groups, decoded)

    def close_chunk(self, flight: Flight, chunk: OpenChunk, gen_s: float) -> None:
        """The chunk is complete (``gen_s``: its whole generation time)."""
        self._thread.submit(self._close_chunk, flight, chunk, gen_s)

    def finish(self, flight: Flight, offer_recording: bool) -> None:
        """The flight has stopped: after its queued chunks, close its recording and offer it unless told not to."""
        try:
            self._thread.submit(self._finalize, flight, offer_recording)
        except RuntimeError:  # the engine has shut down: nothing left to deliver
            pass

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True)

    # ---- the delivery thread --------------------------------------------------------------------------------
    def _deliver_group(self, flight: Flight, chunk: OpenChunk, frames: np.ndarray) -> None:
        """JPEG-encode one group; a streaming flight gets it at once, others at ``_close_chunk``."""
        if flight.closed:
            return
        started = time.perf_counter()
        first = chunk.message.first_frame + chunk.sent + len(chunk.messages)
        quality = self.settings.jpeg_quality
        jpegs = encode_jpegs(frames, quality, self.jpeg_device)  # a CUDA device: the whole group in one call
        messages = [frame_message(chunk.message.index, first + i, jpeg) for i, jpeg in enumerate(jpegs)]
        self.metrics.inc("wanfly_jpeg_seconds_total", time.perf_counter() - started)
        chunk.frames.append(frames)
        if flight.stream:
            self._hand_over(flight, chunk, messages)
        else:
            chunk.messages += messages

    def _deliver_block(self, flight: Flight, chunk: OpenChunk, groups: Future, decoded: Callable) -> None:
        try:
            frames = groups.result()  # [(n, H, W, 3), ...] one per latent frame
        except Exception as error:  # the engine's worker stops the flight and says so
            decoded(error)
            return
        decoded(None)
        for group in frames:
            self._deliver_group(flight, chunk, group)

    def _hand_over(self, flight: Flight, chunk: OpenChunk, messages: list[bytes]) -> None:
        if chunk.sent == 0:
            flight.notify(ChunkFrames(chunk.message, messages))
            denoised = chunk.timings.get("denoised")
            if denoised is not None:  # last denoising step -> first frame handed to the connection
                self.metrics.inc("wanfly_first_frame_seconds_total", time.perf_counter() - denoised)
                self.metrics.inc("wanfly_chunks_delivered_total")
        else:
            flight.notify(MoreFrames(chunk.message.index, messages))
        chunk.sent += len(messages)

    def _close_chunk(self, flight: Flight, chunk: OpenChunk, gen_s: float) -> None:
        if flight.closed:
            return
        if not chunk.frames:  # its decode failed (the engine stops the flight): nothing to hand over or record
            with self.lock:
                if flight.open_chunk is chunk:
                    flight.open_chunk = None
            return
        if not flight.stream:
            chunk.message.gen_ms = round(gen_s * 1000, 2)  # the whole chunk was generated before it went out
            self._hand_over(flight, chunk, chunk.messages)
        self._record(flight, chunk.message, np.concatenate(chunk.frames))
        with self.lock:
            if flight.open_chunk is chunk:
                flight.open_chunk = None

    def _record(self, flight: Flight, chunk: Chunk, frames: np.ndarray) -> None:
        if flight.recording_failed:
            return
        try:
            if flight.recorder is None:
                flight.recorder = FlightRecorder(
                    self.recordings, flight.id, self.world.fps,
                    {"prompt": flight.prompt, "seed": flight.seed, "steps": flight.steps, **flight.meta},
                    self.settings.max_recording_frames)
            flight.recorder.add({"index": chunk.index, "frames": chunk.frames, "actions": chunk.actions,
                                 "gen_ms": chunk.gen_ms}, frames)
        except Exception:
            log.exception("recording of flight %s failed", flight.id)
            flight.recording_failed = True
            if flight.recorder is not None:
                flight.recorder.abandon()

    def _finalize(self, flight: Flight, offer: bool) -> None:
        chunk = flight.open_chunk  # stopped mid-chunk: what the client was already sent belongs in the recording
        if chunk is not None and flight.stream and chunk.sent and not flight.closed:
            sent = np.concatenate(chunk.frames)[:chunk.sent]  # (n, H, W, 3)
            steps = steps_shown(len(sent), chunk.message.index == 0)  # the action steps of the frames sent
            self._record(flight, chunk.message.model_copy(
                update={"frames": len(sent), "actions": chunk.message.actions[:steps]}), sent)
        flight.open_chunk = None
        info = None
        if flight.recorder is not None and not flight.recording_failed:
            try:
                info = flight.recorder.close()
            except Exception:
                log.exception("closing the recording of flight %s failed", flight.id)
        if offer and not flight.closed:
            flight.notify(Recording.of() if info is None else Recording.of(**info))


def steps_shown(frames: int, first: bool) -> int:
    """Action steps whose frames are all among a chunk's first ``frames`` (4 per step, after the flight's frame 0)."""
    return max(0, frames - int(first)) // 4
