"""Engine scheduling (narrow unit tests with a stand-in generator): round-robin, jobs alternating with flights,
pacing (no running ahead of playback), a flight whose client is gone is dropped. The default path is tested
with the real pipeline in test_session.py."""
import dataclasses
import threading
import time

import numpy as np
from PIL import Image

from server.engine import Engine, Flight
from server.generators import Generator, GenRequest
from server.inputs import InputTimeline
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
    assert waiting_events[0] == ("queue", 0)
    engine.start()
    try:
        time.sleep(0.3)
    finally:
        engine.close()
    assert "gone" not in generator.calls and gone_events == []
    assert any(event[0] == "chunk" for event in waiting_events)


class GroupGenerator(Generator):
    """Yields a 9-frame chunk as groups of 1, 4, 4 frames (like the streaming VAE decode); frame i of a chunk is
    filled with i. Waits on ``release`` before the last group, so a test can see what went out before it."""

    def __init__(self, world):
        self.world, self.release, self.calls = world, threading.Event(), 0

    def generate(self, request, progress=None):
        raise AssertionError("flights use generate_stream")

    def generate_stream(self, request, timings=None):
        self.calls += 1
        frames = np.zeros((request.num_frames, self.world.height, self.world.width, 3), np.uint8)
        frames[:] = np.arange(request.num_frames, dtype=np.uint8)[:, None, None, None]  # (F, H, W, 3)
        if timings is not None:
            timings["denoised"] = time.perf_counter()
        yield frames[:1]
        yield frames[1:5]
        assert self.release.wait(10)
        yield frames[5:]


def frame_indices(messages):
    return [int.from_bytes(m[4:8], "big") for m in messages]


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def started_streaming_flight(random_world, tmp_path):
    """(generator, started engine, its one streaming flight, the flight's events) on a GroupGenerator."""
    world = dataclasses.replace(random_world, fps=1000)
    generator = GroupGenerator(world)
    engine = Engine(generator, Settings(recordings_dir=str(tmp_path), gradio=False))
    events = []
    solo = Flight(prompt="s", image=Image.new("RGB", (world.width, world.height)), seed=0, steps=1,
                  timeline=InputTimeline(world.full_scale, world.fps), notify=events.append, stream=True)
    engine.add_flight(solo)
    engine.start()
    return generator, engine, solo, events


def test_streaming_flight_gets_frame_groups_before_the_chunk_is_decoded(random_world, tmp_path):
    generator, engine, solo, events = started_streaming_flight(random_world, tmp_path)
    try:
        assert wait_for(lambda: len(events) >= 2)
        assert not generator.release.is_set()  # the last group is not decoded yet...
        kind, meta, messages = events[0]  # ...but the chunk's first frames are out
        assert (kind, meta["index"], meta["frames"], meta["first_frame"]) == ("chunk", 0, 9, 0)
        assert frame_indices(messages) == [0]
        assert events[1][:2] == ("frames", 0) and frame_indices(events[1][2]) == [1, 2, 3, 4]
        generator.release.set()
        assert wait_for(lambda: sum(e[0] == "chunk" for e in events) >= 2)
    finally:
        generator.release.set()
        engine.close()
    chunk0 = [i for e in events if e[0] == "frames" and e[1] == 0 or e[0] == "chunk" and e[1]["index"] == 0
              for i in frame_indices(e[2])]
    assert chunk0 == list(range(9))
    second = next(e for e in events if e[0] == "chunk" and e[1]["index"] == 1)
    assert second[1]["frames"] == 8 and second[1]["first_frame"] == 9  # the repeated first frame is not sent
    assert frame_indices(second[2]) == [9, 10, 11, 12]  # its first group lost the repeated frame (1 of 1+4)
    assert engine.metrics.value("wanfly_chunks_delivered_total") >= 2
    assert engine.metrics.value("wanfly_first_frame_seconds_total") > 0


def test_stop_in_the_middle_of_a_streamed_chunk_records_what_was_sent(random_world, tmp_path):
    """The browser shows a streamed chunk's first frames before the chunk is decoded; a stop then must still give a
    recording of exactly those frames (not an empty one)."""
    generator, engine, solo, events = started_streaming_flight(random_world, tmp_path)
    try:
        assert wait_for(lambda: len(events) >= 2)  # frames 0..4 sent, the last group still decoding
        engine.finish_flight(solo)
        generator.release.set()
        assert wait_for(lambda: any(e[0] == "recording" for e in events))
    finally:
        generator.release.set()
        engine.close()
    info = next(e[1] for e in events if e[0] == "recording")
    assert info["id"] is not None and info["frames"] == 5 and info["chunks"] == 1
    assert not any(e[0] == "frames" and frame_indices(e[2])[0] >= 5 for e in events)  # nothing after the stop


def test_non_streaming_flight_gets_each_chunk_whole(random_world, tmp_path):
    world = dataclasses.replace(random_world, fps=1000)
    generator = GroupGenerator(world)
    generator.release.set()
    engine = Engine(generator, Settings(recordings_dir=str(tmp_path), gradio=False))
    events = []
    engine.add_flight(flight("whole", world, events))
    engine.start()
    try:
        assert wait_for(lambda: sum(e[0] == "chunk" for e in events) >= 2)
    finally:
        engine.close()
    chunks = [e for e in events if e[0] == "chunk"]
    assert not any(e[0] == "frames" for e in events)
    assert frame_indices(chunks[0][2]) == list(range(9))
    assert frame_indices(chunks[1][2]) == list(range(9, 17))
    assert chunks[1][1]["frames"] == 8 and chunks[1][1]["gen_ms"] > 0
