"""server.engine scheduling (narrow unit tests with a stand-in generator): round-robin, jobs alternating with flights,
pacing (no running ahead of playback), a flight whose client is gone is dropped, a failing chunk stops its flight.
What reaches a flight from the delivery thread is in test_delivery.py; the default path with the real pipeline in
test_session.py."""
import dataclasses
import threading
import time

import numpy as np
from PIL import Image

from server.engine import Engine
from server.flight import ChunkFrames, Flight
from server.generators import Generator, GenRequest
from server.inputs import InputTimeline
from server.protocol import Error, Queue, Recording
from server.settings import Settings


class RecordingGenerator(Generator):
    def __init__(self, world, delay=0.0):
        self.world, self.delay, self.calls = world, delay, []
        self.lock = threading.Lock()

    def generate(self, request, progress=None):
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(request.prompt)
        if progress:
            progress(1, 1)
        return np.zeros((request.num_frames, self.world.height, self.world.width, 3), np.uint8)


def make_engine(random_world, tmp_path, fps=16, delay=0.0, **settings):
    world = dataclasses.replace(random_world, fps=fps)
    generator = RecordingGenerator(world, delay)
    engine = Engine(generator, Settings(recordings_dir=str(tmp_path), gradio=False, **settings))
    return engine, generator


def flight(name, world, events=None):
    image = Image.new("RGB", (world.width, world.height))
    sink = events if events is not None else []
    return Flight(prompt=name, image=image, seed=0, steps=1, timeline=InputTimeline(world.full_scale, world.fps),
                  notify=sink.append)


def test_round_robin_and_jobs_alternate(random_world, tmp_path):
    engine, generator = make_engine(random_world, tmp_path, fps=1000, delay=0.01, max_jobs=8)
    world = generator.world
    flights = [flight(name, world) for name in "abc"]
    for f in flights:
        assert engine.add_flight(f) == 0
    image = Image.new("RGB", (world.width, world.height))
    jobs = [engine.submit_job(GenRequest("job", image, None, 9, 1, 0, 1.0)) for _ in range(2)]
    engine.start()
    try:
        assert all(job.done.wait(10) for job in jobs)
        time.sleep(0.2)
    finally:
        engine.close()
    calls = generator.calls
    first_flights = [c for c in calls if c != "job"][:9]
    assert first_flights == list("abcabcabc")
    job_positions = [i for i, c in enumerate(calls) if c == "job"]
    assert job_positions[0] <= 2 and job_positions[1] - job_positions[0] == 2  # one job, one flight chunk, one job
    assert all(j.status == "done" and j.frames == 9 for j in jobs)


def test_pacing_does_not_run_ahead_of_playback(random_world, tmp_path):
    engine, generator = make_engine(random_world, tmp_path, fps=16)  # a chunk plays 8 / 16 = 0.5 s
    events = []
    engine.add_flight(flight("solo", generator.world, events))
    engine.start()
    try:
        time.sleep(1.3)
    finally:
        engine.close()
    chunks = len(generator.calls)
    assert 3 <= chunks <= 4, chunks  # first at once, then one per 0.5 s of playback (one chunk ahead)


def test_closed_flight_gets_nothing_and_frees_its_slot(random_world, tmp_path):
    engine, generator = make_engine(random_world, tmp_path, fps=1000, max_sessions=1, max_waiting=1)
    gone_events, waiting_events = [], []
    gone, waiting = flight("gone", generator.world, gone_events), flight("waiting", generator.world, waiting_events)
    assert engine.add_flight(gone) == 0 and engine.add_flight(waiting) == 1
    engine.remove_flight(gone)
    assert engine.stats() == {"active": 1, "waiting": 0, "jobs_queued": 0}
    assert waiting_events[0] == Queue(position=0)
    engine.start()
    try:
        time.sleep(0.3)
    finally:
        engine.close()
    assert "gone" not in generator.calls and gone_events == []
    assert any(isinstance(event, ChunkFrames) for event in waiting_events)


class FailingGenerator(RecordingGenerator):
    def generate_stream(self, request, timings=None):
        raise RuntimeError("out of memory")
        yield


def test_a_failing_chunk_stops_its_flight_with_an_error(random_world, tmp_path):
    engine = Engine(FailingGenerator(random_world), Settings(recordings_dir=str(tmp_path), gradio=False))
    events = []
    failing = Flight(prompt="f", image=Image.new("RGB", (random_world.width, random_world.height)), seed=0, steps=1,
                     timeline=InputTimeline(random_world.full_scale, random_world.fps), notify=events.append)
    engine.add_flight(failing)
    engine.start()
    try:
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:  # the error, and the recording offer
            time.sleep(0.01)
    finally:
        engine.close()
    assert failing.stopped and engine.stats()["active"] == 0
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == "generation_failed" and "stopped" in error.message
    assert Recording.of() in events  # nothing was generated, so nothing was recorded
