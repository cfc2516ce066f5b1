"""The engine: one generation worker thread owns the pipeline; flights and jobs share it.

    Generator        the interface between scheduling and a model: ``generate(GenRequest) -> (F, H, W, 3) uint8``
    PipelineGenerator  the real one, a ``WanActionPipeline`` (TI2V from a first frame, actions ``(T, 2, 8)`` raw)
    Engine           scheduling: up to ``max_sessions`` active flights served round-robin, one chunk each in turn,
                     a bounded waiting line with positions, a bounded job queue; jobs alternate with flight chunks

A flight chunk is a TI2V generation of ``chunk_frames`` (4k+1) frames from the previous chunk's last frame (the
uploaded image for the first) with k actions cut from the flight's input timeline. The first chunk sends all its
frames, later ones drop their first frame (it repeats the previous chunk's last). A flight is due for its next
chunk once at most one chunk of playback is left at the client (server-side estimate), so the next chunk is
generated while the current one plays. JPEG encoding, recording and hand-off to the connection run on a separate
delivery thread, and the hand-off (``flight.notify``) must never block: the worker never waits for a client.
"""
from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from PIL import Image

from models.action_format import num_actions_for_frames

from .images import encode_jpeg, frame_message, video_to_frames
from .inputs import InputTimeline
from .metrics import Metrics
from .recording import FileStore, FlightRecorder, write_mp4
from .worlds import World

log = logging.getLogger("wanfly.engine")
STALL_TOLERANCE_S = 0.02


@dataclass
class GenRequest:
    prompt: str
    image: Image.Image  # the first frame, already world.width x world.height
    actions: Optional[np.ndarray]  # (T, 2, 8) raw, T = (num_frames - 1) // 4; None = no action input
    num_frames: int
    steps: int
    seed: int
    cfg_scale: float
    negative_prompt: str = ""


class Generator(ABC):
    world: World

    @abstractmethod
    def generate(self, request: GenRequest, progress: Callable[[int, int], None] = None) -> np.ndarray:
        """Frames ``(num_frames, H, W, 3)`` uint8; ``progress(step, total)`` after each denoising step."""


class PipelineGenerator(Generator):
    def __init__(self, world: World):
        self.world = world

    def generate(self, request: GenRequest, progress=None) -> np.ndarray:
        import torch

        def steps(timesteps):
            total = len(timesteps)
            for i, timestep in enumerate(timesteps):
                yield timestep
                if progress is not None:
                    progress(i + 1, total)

        world = self.world
        actions = None
        if request.actions is not None and world.controller:
            actions = torch.as_tensor(np.asarray(request.actions), dtype=torch.float32)  # (T, 2, 8)
        video = world.pipe(
            prompt=request.prompt, negative_prompt=request.negative_prompt, input_image=request.image,
            actions=actions, height=world.height, width=world.width, num_frames=request.num_frames,
            num_inference_steps=request.steps, seed=request.seed, cfg_scale=request.cfg_scale, tiled=world.tiled,
            output_type="floatpoint", progress_bar_cmd=steps)  # (1, 3, F, H, W)
        return video_to_frames(video)


def warm_up(generator: Generator) -> float:
    """One chunk-sized generation so the first flight does not pay for lazy initialisation (kernels, caches);
    once per world. Returns the seconds it took (0 if the world was already warm)."""
    world = generator.world
    if getattr(world, "warm", False):
        return 0.0
    started = time.perf_counter()
    image = Image.new("RGB", (world.width, world.height), (128, 128, 128))
    actions = np.zeros((num_actions_for_frames(world.chunk_frames), 2, 8))
    generator.generate(GenRequest(prompt=world.prompt, image=image, actions=actions, num_frames=world.chunk_frames,
                                  steps=1, seed=0, cfg_scale=world.cfg_scale))
    world.warm = True
    return time.perf_counter() - started


class EngineFull(Exception):
    """The waiting line (flights) or the job queue is full."""


class Flight:
    """Engine-side state of one flight. ``notify(event)`` is called from engine threads and must not block:
    ``("queue", position)``, ``("chunk", meta, [binary frame messages])``, ``("recording", info)``,
    ``("error", code, message)``."""

    def __init__(self, prompt: str, image: Image.Image, seed: int, steps: int, timeline: InputTimeline,
                 notify: Callable, meta: dict = None):
        self.id = secrets.token_urlsafe(12)
        self.prompt, self.seed, self.steps, self.timeline, self.notify = prompt, seed, steps, timeline, notify
        self.meta = meta or {}
        self.last_frame = image
        self.index = 0  # next chunk index
        self.frame_index = 0  # global index of the next frame sent
        self.play_end = 0.0  # estimated time the client runs out of frames
        self.stopped = False  # no more chunks
        self.closed = False  # connection gone: deliver nothing
        self.recorder: Optional[FlightRecorder] = None
        self.recording_failed = False


@dataclass
class Job:
    request: GenRequest
    fps: int
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    status: str = "queued"  # queued, running, done, failed
    progress: float = 0.0
    error: Optional[str] = None
    frames: int = 0
    created: float = field(default_factory=time.time)
    finished: Optional[float] = None
    done: threading.Event = field(default_factory=threading.Event)


class Engine:
    def __init__(self, generator: Generator, settings, metrics: Metrics = None, recordings: FileStore = None,
                 results: FileStore = None, clock=time.monotonic):
        self.generator, self.world, self.settings = generator, generator.world, settings
        self.metrics = metrics or Metrics()
        self.recordings = recordings or FileStore(settings.recordings_dir, keep=settings.recordings_kept)
        self.results = results or FileStore(None, keep=settings.jobs_kept, prefix="wanfly-jobs-")
        self.clock = clock
        self.chunk_steps = num_actions_for_frames(self.world.chunk_frames)
        self.chunk_seconds = (self.world.chunk_frames - 1) / self.world.fps
        self._cond = threading.Condition()
        self._active: list[Flight] = []
        self._waiting: deque[Flight] = deque()
        self._queued_jobs: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._rr = 0
        self._job_turn = itertools.cycle((False, True))
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="wanfly-generation", daemon=True)
        self._delivery = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wanfly-delivery")

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
        self._delivery.shutdown(wait=True)

    # ---- flights -------------------------------------------------------------------------------------------
    def add_flight(self, flight: Flight) -> int:
        """Active at once (0) or the 1-based position in the waiting line; EngineFull beyond it."""
        with self._cond:
            if len(self._active) < self.settings.max_sessions:
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
            self._promote(renumber=was_waiting)
            self._update_gauges()
            try:
                self._delivery.submit(self._finalize, flight, offer_recording)
            except RuntimeError:  # the engine has shut down: nothing left to deliver
                pass
            self._cond.notify_all()

    def remove_flight(self, flight: Flight) -> None:
        """The connection is gone: deliver nothing more and free everything."""
        flight.closed = True
        self.finish_flight(flight, offer_recording=False)

    def _promote(self, renumber: bool = False) -> None:
        """Fill free slots from the waiting line; tell everyone whose position changed."""
        while self._waiting and len(self._active) < self.settings.max_sessions:
            flight = self._waiting.popleft()
            self._active.append(flight)
            flight.notify(("queue", 0))
            renumber = True
        if renumber:
            for position, flight in enumerate(self._waiting, start=1):
                flight.notify(("queue", position))

    def _update_gauges(self) -> None:
        self.metrics.set("wanfly_sessions_active", len(self._active))
        self.metrics.set("wanfly_sessions_queued", len(self._waiting))
        self.metrics.set("wanfly_jobs_queued", len(self._queued_jobs))

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

    # ---- the worker ----------------------------------------------------------------------------------------
    def _pick(self):
        """(kind, item) to run now, or (None, seconds to wait)."""
        now = self.clock()
        flight, wait, next_rr = None, None, self._rr
        count = len(self._active)
        for offset in range(count):
            candidate = self._active[(self._rr + offset) % count]
            due_in = candidate.play_end - self.chunk_seconds - now
            if due_in <= 0:
                flight, next_rr = candidate, (self._rr + offset + 1) % count
                break
            wait = due_in if wait is None else min(wait, due_in)
        if self._queued_jobs and (flight is None or next(self._job_turn)):
            return "job", self._queued_jobs.popleft()
        if flight is not None:
            self._rr = next_rr
            return "flight", flight
        return None, wait

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    kind, item = self._pick()
                    if kind is not None:
                        break
                    self._cond.wait(timeout=item)
                self._update_gauges()
            try:
                self._run_flight(item) if kind == "flight" else self._run_job(item)
            except Exception:  # a failing chunk or job must not kill the worker
                log.exception("generation failed")
                if kind == "flight":
                    self.finish_flight(item)
                    item.notify(("error", "generation_failed", "generation failed; the flight was stopped"))

    def _run_flight(self, flight: Flight) -> None:
        raw, input_seq = flight.timeline.actions(self.chunk_steps)  # (k, 2, 8) raw
        request = GenRequest(prompt=flight.prompt, image=flight.last_frame, actions=raw,
                             num_frames=self.world.chunk_frames, steps=flight.steps, seed=flight.seed + flight.index,
                             cfg_scale=self.world.cfg_scale)
        started = time.perf_counter()
        frames = self.generator.generate(request)  # (F, H, W, 3)
        gen_s = time.perf_counter() - started
        self.metrics.observe_chunk(gen_s)
        self.metrics.inc("wanfly_chunks_total")
        with self._cond:
            if flight.stopped:
                return
            flight.last_frame = Image.fromarray(frames[-1])
            send = frames if flight.index == 0 else frames[1:]
            now = self.clock()
            if flight.index > 0 and now > flight.play_end + STALL_TOLERANCE_S:
                self.metrics.inc("wanfly_stalls_total")
            flight.play_end = max(now, flight.play_end) + len(send) / self.world.fps
            meta = {"type": "chunk", "index": flight.index, "frames": len(send), "first_frame": flight.frame_index,
                    "actions": raw.tolist(), "gen_ms": round(gen_s * 1000, 2), "input_seq": input_seq}
            flight.index += 1
            flight.frame_index += len(send)
            self._delivery.submit(self._deliver, flight, meta, send)

    def _run_job(self, job: Job) -> None:
        job.status = "running"
        try:
            frames = self.generator.generate(job.request, progress=lambda i, n: setattr(job, "progress", i / n * 0.95))
            self.results.add(job.id)
            write_mp4(self.results.path(job.id, ".mp4"), frames, job.fps)
            job.frames, job.progress, job.status = len(frames), 1.0, "done"
        except Exception as error:
            log.exception("job %s failed", job.id)
            job.status, job.error = "failed", f"{type(error).__name__}: {error}"
        finally:
            job.finished = time.time()
            self.metrics.inc("wanfly_jobs_total", status=job.status)
            job.done.set()

    # ---- the delivery thread -------------------------------------------------------------------------------
    def _deliver(self, flight: Flight, meta: dict, frames: np.ndarray) -> None:
        if flight.closed:
            return
        started = time.perf_counter()
        quality = self.settings.jpeg_quality
        messages = [frame_message(meta["index"], meta["first_frame"] + i, encode_jpeg(frame, quality))
                    for i, frame in enumerate(frames)]
        self.metrics.inc("wanfly_jpeg_seconds_total", time.perf_counter() - started)
        flight.notify(("chunk", meta, messages))
        self._record(flight, meta, frames)

    def _record(self, flight: Flight, meta: dict, frames: np.ndarray) -> None:
        if flight.recording_failed:
            return
        try:
            if flight.recorder is None:
                flight.recorder = FlightRecorder(
                    self.recordings, flight.id, self.world.width, self.world.height, self.world.fps,
                    {"prompt": flight.prompt, "seed": flight.seed, "steps": flight.steps, **flight.meta},
                    self.settings.max_recording_frames)
            flight.recorder.add({k: meta[k] for k in ("index", "frames", "actions", "gen_ms")}, frames)
        except Exception:
            log.exception("recording of flight %s failed", flight.id)
            flight.recording_failed = True

    def _finalize(self, flight: Flight, offer: bool) -> None:
        info = None
        if flight.recorder is not None and not flight.recording_failed:
            try:
                info = flight.recorder.close()
            except Exception:
                log.exception("closing the recording of flight %s failed", flight.id)
        if offer and not flight.closed:
            if info is None:
                flight.notify(("recording", {"id": None, "frames": 0, "chunks": 0, "truncated": False}))
            else:
                flight.notify(("recording", info))
