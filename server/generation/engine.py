"""The engine: one generation worker thread owns the pipeline; flights and jobs share it.

    Generator        the interface between scheduling and a model (``server.generation.generators``)
    Engine           scheduling: up to ``max_sessions`` active flights served round-robin, one chunk (or block)
                     each in turn (a paused flight, whose client shows no sign of playing, gets none), a bounded
                     waiting line with positions, a bounded job queue; job parts alternate with flight turns
    Delivery         JPEG encoding, hand-off to the connection and recording, on its own thread
                     (``server.media.delivery``)

Chunked worlds: a flight chunk is a TI2V generation of ``chunk_frames`` (4k+1) frames from the previous chunk's last
frame (the uploaded image for the first) with k actions cut from the flight's input timeline (averaged over the
chunk's window). The first chunk sends all its frames, later ones drop their first frame (it repeats the previous
chunk's last). A flight is due for its next chunk once at most one chunk of playback is left at the client
(server-side estimate), so the next chunk is generated while the current one plays.

Causal worlds: a flight owns a ``models.stream.WorldStream`` (its K/V and decoder caches stay resident), opened at
its first turn as an active flight and closed when it ends, whatever ends it (stop, disconnect, error, shutdown).
Each turn makes ONE block (``block_frames`` latent frames, 4 video frames each) from the input state at the block's
start (``InputTimeline.block_actions``); the first block also sends the first image (frame 0), later blocks repeat
nothing. A flight is due just in time: when its client's playback left is down to ``Pacer.lead`` (the measured time
of a block to its first frames, the turns that may run before it, ``--block_margin_s``), so a key shows about half a
block plus the lead after it is pressed. Jobs run one block per turn too, alternating with flights.

JPEG encoding, recording and hand-off to the connection run on the delivery thread (``server.media.delivery``), and the
hand-off (``flight.notify``) must never block: the worker never waits for a client. Frames arrive in groups as the
VAE decodes them (``models.streaming``); each group goes to the delivery thread at once, so JPEG encoding overlaps
decoding. A flight created with ``stream=True`` also gets each group on the wire at once; otherwise the chunk is
handed over whole when it is complete. ``--decode_overlap`` (default on with CUDA): a causal block decodes on its
stream's lane (``models.frames.lane``) while the worker goes on; the delivery thread takes its frames in order.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Optional

import numpy as np
from PIL import Image

from models.action_format import num_actions_for_frames
from server.generation.affinity import check_cores, pin_this_thread
from server.generation.flight import Flight, OpenChunk
from server.generation.generators import Generator, GenRequest
from server.generation.job import Job
from server.generation.streams import Pacer, block_play_s
from server.media.delivery import Delivery
from server.media.recording import FileStore, write_mp4
from server.metrics import Metrics
from server.protocol import Chunk, Error, Queue
from server.settings import DEFAULT_MAX_SESSIONS

log = logging.getLogger("wanfly.engine")
STALL_TOLERANCE_S = 0.02


class EngineFull(Exception):
    """The waiting line (flights) or the job queue is full."""


class Engine:
    def __init__(self, generator: Generator, settings, metrics: Metrics = None, recordings: FileStore = None,
                 results: FileStore = None, clock=time.monotonic):
        self.generator, self.world, self.settings = generator, generator.world, settings
        self.metrics = metrics or Metrics()
        self.recordings = recordings or FileStore(settings.recordings_dir, keep=settings.recordings_kept,
                                                  prefix="wanfly-rec-")
        self.results = results or FileStore(None, keep=settings.jobs_kept, prefix="wanfly-jobs-")
        self.clock = clock
        self.max_sessions = settings.max_sessions or DEFAULT_MAX_SESSIONS
        self.chunk_steps = num_actions_for_frames(self.world.chunk_frames)
        self.chunk_seconds = (self.world.chunk_frames - 1) / self.world.fps
        self.pacer = Pacer(block_play_s(self.world), settings.block_margin_s) if self.world.causal else None
        self._cond = threading.Condition()
        self._active: list[Flight] = []
        self._waiting: deque[Flight] = deque()
        self._queued_jobs: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._rr = 0
        self._running: Optional[Flight] = None  # the flight whose turn the worker is running (it uses its stream)
        self._job: Optional[Job] = None  # the job being made, part by part
        self._job_turn = itertools.cycle((False, True))
        self._stopping = False
        self.cpu_cores = check_cores(getattr(settings, "cpu_cores", None))  # ValueError before any thread starts
        self._worker = threading.Thread(target=self._run, name="wanfly-generation", daemon=True)
        self._delivery = Delivery(self.world, settings, self.metrics, self.recordings, self._cond)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        self._worker.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            flights = self._active + list(self._waiting)
            self._cond.notify_all()
        for flight in flights:
            self.remove_flight(flight)
        if self._worker.is_alive():
            self._worker.join(timeout=30)
        job = self._job
        if job is not None and job.parts is not None:  # frees its stream
            job.parts.close()
            self._end_job(job, "failed", "the server shut down")
        self._delivery.shutdown()

    # ---- flights -------------------------------------------------------------------------------------------
    def add_flight(self, flight: Flight) -> int:
        """Active at once (0) or the 1-based position in the waiting line; EngineFull beyond it."""
        with self._cond:
            if len(self._active) < self.max_sessions:
                self._active.append(flight)
                position = 0
            elif len(self._waiting) < self.settings.max_waiting:
                self._waiting.append(flight)
                position = len(self._waiting)
            else:
                self.metrics.inc("wanfly_sessions_refused_total")
                raise EngineFull(f"server full: {len(self._active)} flights active, {len(self._waiting)} waiting")
            self.metrics.inc("wanfly_sessions_total")
            self._update_gauges()
            self._cond.notify_all()
        return position

    def finish_flight(self, flight: Flight, offer_recording: bool = True) -> None:
        """Stop generating for a flight; its pending chunks are still delivered, then its recording is closed."""
        with self._cond:
            if flight.stopped:
                return
            flight.stopped = True
            was_waiting = flight in self._waiting
            if was_waiting:
                self._waiting.remove(flight)
            elif flight in self._active:
                self._active.remove(flight)
            if self._running is not flight:  # else the worker releases it when its turn ends
                self._release(flight)
            self._promote(renumber=was_waiting)
            self._update_gauges()
            self._delivery.finish(flight, offer_recording)
            self._cond.notify_all()

    def pause_flight(self, flight: Flight, paused: bool) -> None:
        """No turns for a flight while ``paused`` (its client shows no sign of playing), until it is resumed."""
        with self._cond:
            flight.paused = paused
            self._update_gauges()
            self._cond.notify_all()

    def _release(self, flight: Flight) -> None:
        """Close a stopped flight's stream (its caches go); under the lock, never while its turn runs."""
        if flight.world_stream is not None:
            flight.world_stream.close()  # after the decodes on its lane
            flight.world_stream = flight.decoding = None
            self.metrics.set("wanfly_streams_open", self.metrics.value("wanfly_streams_open") - 1)

    def remove_flight(self, flight: Flight) -> None:
        """The connection is gone: deliver nothing more and free everything."""
        flight.closed = True
        self.finish_flight(flight, offer_recording=False)

    def _promote(self, renumber: bool = False) -> None:
        """Fill free slots from the waiting line; tell everyone whose position changed."""
        while self._waiting and len(self._active) < self.max_sessions:
            flight = self._waiting.popleft()
            self._active.append(flight)
            flight.notify(Queue(position=0))
            renumber = True
        if renumber:
            for position, flight in enumerate(self._waiting, start=1):
                flight.notify(Queue(position=position))

    def _update_gauges(self) -> None:
        self.metrics.set("wanfly_sessions_active", len(self._active))
        self.metrics.set("wanfly_sessions_queued", len(self._waiting))
        self.metrics.set("wanfly_jobs_queued", len(self._queued_jobs))
        self.metrics.set("wanfly_flights_paused", sum(f.paused for f in itertools.chain(self._active, self._waiting)))

    # ---- jobs ----------------------------------------------------------------------------------------------
    def submit_job(self, request: GenRequest) -> Job:
        job = Job(request=request, fps=self.world.fps)
        with self._cond:
            if len(self._queued_jobs) >= self.settings.max_jobs:
                raise EngineFull(f"job queue full ({len(self._queued_jobs)} waiting)")
            self._queued_jobs.append(job)
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
            for old in finished[:max(0, len(finished) - self.settings.jobs_kept)]:
                del self._jobs[old.id]
            self._update_gauges()
            self._cond.notify_all()
        return job

    def get_job(self, job_id: str) -> Optional[Job]:
        with self._cond:
            return self._jobs.get(job_id)

    def job_position(self, job: Job) -> int:
        with self._cond:
            return next((i for i, j in enumerate(self._queued_jobs, start=1) if j is job), 0)

    def stats(self) -> dict:
        with self._cond:
            return {"active": len(self._active), "waiting": len(self._waiting), "jobs_queued": len(self._queued_jobs)}

    def lead_s(self) -> float:
        """Seconds of client playback left when an active flight becomes due (under the lock)."""
        if self.pacer is None:
            return self.chunk_seconds
        playing = sum(not f.paused for f in self._active)
        others = max(0, playing - 1) + int(self._job is not None or bool(self._queued_jobs))
        return self.pacer.lead(others)

    # ---- the worker ----------------------------------------------------------------------------------------
    def _pick(self):
        """(kind, item) to run now, or (None, seconds to wait)."""
        now, lead = self.clock(), self.lead_s()
        flight, wait, next_rr = None, None, self._rr
        count = len(self._active)
        for offset in range(count):
            candidate = self._active[(self._rr + offset) % count]
            if candidate.paused:
                continue
            due_in = candidate.play_end - lead - now
            if due_in <= 0:
                flight, next_rr = candidate, (self._rr + offset + 1) % count
                break
            wait = due_in if wait is None else min(wait, due_in)
        if (self._job is not None or self._queued_jobs) and (flight is None or next(self._job_turn)):
            if self._job is None:
                self._job = self._queued_jobs.popleft()
            return "job", self._job
        if flight is not None:
            self._rr = next_rr
            return "flight", flight
        return None, wait

    def _run(self) -> None:
        if self.cpu_cores:
            pin_this_thread(self.cpu_cores)
            log.info("generation worker pinned to CPU core(s) %s", self.cpu_cores)
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    kind, item = self._pick()
                    if kind is not None:
                        break
                    self._cond.wait(timeout=item)
                self._running = item if kind == "flight" else None
                self._update_gauges()
            cpu_started = time.thread_time()
            try:
                self._run_flight(item) if kind == "flight" else self._run_job(item)
            except Exception:  # a failing chunk or job must not kill the worker
                log.exception("generation failed")
                if kind == "flight":
                    self.finish_flight(item)
                    item.notify(Error(code="generation_failed", message="generation failed; the flight was stopped"))
            finally:
                if kind == "flight":  # the work itself, apart from what other processes took of the CPU
                    self.metrics.inc("wanfly_chunk_cpu_seconds_total", time.thread_time() - cpu_started)
                with self._cond:
                    self._running = None
                    if kind == "flight" and item.stopped:  # it stopped during its turn: its stream goes now
                        self._release(item)

    def _run_flight(self, flight: Flight) -> None:
        if self.world.causal:
            return self._run_block(flight)
        raw, input_seq = flight.timeline.actions(self.chunk_steps)  # (k, 2, 8) raw
        request = GenRequest(prompt=flight.prompt, image=flight.last_frame, actions=raw,
                             num_frames=self.world.chunk_frames, steps=flight.steps, seed=flight.seed + flight.index,
                             cfg_scale=self.world.cfg_scale)
        started = time.perf_counter()
        timings, chunk, last = {}, None, None
        skip = 0 if flight.index == 0 else 1  # later chunks repeat the previous chunk's last frame first
        for group in self.generator.generate_stream(request, timings=timings):  # (n, H, W, 3)
            last = group
            send, skip = group[skip:], max(0, skip - len(group))
            if not len(send):
                continue
            if chunk is None:
                chunk = self._open_chunk(flight, raw, input_seq, time.perf_counter() - started, timings)
            if chunk is None or not self._unless_stopped(flight, self._delivery.group, chunk, send):
                return  # the flight stopped meanwhile: abandon the rest of the decode
        gen_s = time.perf_counter() - started
        self.metrics.observe_chunk(gen_s)
        self.metrics.inc("wanfly_chunks_total")
        if chunk is not None and self._unless_stopped(flight, self._delivery.close_chunk, chunk, gen_s):
            flight.last_frame = Image.fromarray(last[-1])

    def _run_block(self, flight: Flight) -> None:
        """One block of a causal flight's stream (opened at its first turn), its groups delivered as decoded."""
        started = time.perf_counter()
        if flight.world_stream is None:
            stream = self.generator.open_stream(flight.prompt, flight.last_frame, flight.seed, flight.steps)
            with self._cond:  # a stop meanwhile: the worker's turn end releases it
                flight.world_stream = stream
                self.metrics.set("wanfly_streams_open", self.metrics.value("wanfly_streams_open") + 1)
        raw, input_seq = flight.timeline.block_actions(self.world.causal_settings.block_frames)  # (b, 2, 8)
        if self.world.decode_overlap:
            return self._run_block_overlapped(flight, raw, input_seq, started)
        chunk, first_s = None, 0.0
        for group in flight.world_stream.step_iter(raw):  # (n, H, W, 3) per latent frame; the cache write follows
            if chunk is None:
                first_s = time.perf_counter() - started
                chunk = self._open_chunk(flight, raw, input_seq, first_s, {})
            if chunk is None or not self._unless_stopped(flight, self._delivery.group, chunk, group):
                return  # the flight stopped meanwhile: abandon the block
        turn_s = time.perf_counter() - started
        if chunk.message.index > 0:  # the first block also opened the stream and decoded the first image
            self.pacer.observe(first_s, turn_s)
        self.metrics.observe_chunk(turn_s)
        self.metrics.inc("wanfly_chunks_total")
        with self._cond:
            self.metrics.set("wanfly_pacing_lead_seconds", self.lead_s())
        self._unless_stopped(flight, self._delivery.close_chunk, chunk, turn_s)

    def _run_block_overlapped(self, flight: Flight, raw, input_seq: int, started: float) -> None:
        """``_run_block`` with the decode on the stream's lane: the worker denoises while the lane decodes the
        flight's previous block, waits for that one (at most one block per flight decodes behind), opens the chunk
        and moves on; the delivery thread hands the groups over once decoded. A failed decode stops the flight here,
        at its next turn, before another chunk opens."""
        groups = flight.world_stream.step_async(raw)  # a Future of the block's frame groups
        previous, flight.decoding = flight.decoding, groups
        if previous is not None and previous.exception() is not None:  # waits for it
            raise previous.exception()
        turn_s = time.perf_counter() - started  # the worker's part: what other flights wait for
        chunk = self._open_chunk(flight, raw, input_seq, turn_s, {})
        if chunk is None:
            return  # the flight stopped meanwhile; releasing its stream waits for the decode

        def decoded(error: Optional[BaseException]) -> None:  # on the delivery thread, as it hands the frames over
            if error is None and chunk.message.index > 0:  # the first block also opened the stream
                with self._cond:
                    self.pacer.observe(time.perf_counter() - started, turn_s)

        self.metrics.observe_chunk(turn_s)
        self.metrics.inc("wanfly_chunks_total")
        with self._cond:
            self.metrics.set("wanfly_pacing_lead_seconds", self.lead_s())
        self._unless_stopped(flight, self._delivery.decoded_block, chunk, groups, decoded)
        self._unless_stopped(flight, self._delivery.close_chunk, chunk, turn_s)

    def _unless_stopped(self, flight: Flight, deliver: Callable, *args) -> bool:
        """Queue ``deliver(flight, *args)`` on the delivery thread unless the flight has stopped. Under the lock, so
        it is ordered before the ``Delivery.finish`` that ``finish_flight`` queues."""
        with self._cond:
            if flight.stopped:
                return False
            deliver(flight, *args)
            return True

    def _open_chunk(self, flight: Flight, raw, input_seq: int, first_s: float, timings: dict) -> Optional[OpenChunk]:
        """At the chunk's first frames: account its playback, number it; None if the flight has stopped."""
        frames = self.world.chunk_frames - (0 if flight.index == 0 else 1)
        with self._cond:
            if flight.stopped:
                return None
            now = self.clock()
            if flight.index > 0 and now > flight.play_end + STALL_TOLERANCE_S:
                self.metrics.inc("wanfly_stalls_total")
            flight.play_end = max(now, flight.play_end) + frames / self.world.fps
            message = Chunk(index=flight.index, frames=frames, first_frame=flight.frame_index, actions=raw.tolist(),
                            gen_ms=round(first_s * 1000, 2), input_seq=input_seq)
            flight.index += 1
            flight.frame_index += frames
            flight.open_chunk = OpenChunk(message, timings)
            return flight.open_chunk

    def _run_job(self, job: Job) -> None:
        """One part of a job (a causal world: one block; else the whole video); the video once all are made."""
        try:
            if job.parts is None:
                job.status = "running"
                job.parts = self.generator.generate_parts(
                    job.request, progress=lambda i, n: setattr(job, "progress", i / n * 0.95))
            part = next(job.parts, None)  # (n, H, W, 3); None: there are no more
            if part is not None:
                job.made.append(part)
                if sum(len(made) for made in job.made) < job.request.num_frames:
                    return  # more parts on later turns
            job.parts.close()  # frees its stream now
            frames = np.concatenate(job.made)  # (num_frames, H, W, 3)
            self.results.add(job.id)
            write_mp4(self.results.path(job.id, ".mp4"), frames, job.fps)
            job.frames = len(frames)
            self._end_job(job, "done")
        except Exception as error:
            log.exception("job %s failed", job.id)
            if job.parts is not None:
                job.parts.close()
            self._end_job(job, "failed", f"{type(error).__name__}: {error}")

    def _end_job(self, job: Job, status: str, error: Optional[str] = None) -> None:
        with self._cond:
            if self._job is job:
                self._job = None
        job.status, job.error, job.made, job.parts = status, error, [], None
        if status == "done":
            job.progress = 1.0
        job.finished = time.time()
        self.metrics.inc("wanfly_jobs_total", status=job.status)
        job.done.set()
