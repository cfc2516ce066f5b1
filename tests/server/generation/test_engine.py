"""server.generation.engine scheduling (narrow unit tests with a stand-in generator): round-robin, jobs alternating
with flights,
pacing (no running ahead of playback), a flight whose client is gone is dropped, a failing chunk stops its flight.
Causal worlds with the real tiny stream: one stream per flight, one block per turn, round-robin between two flights,
the stream closed on stop, error, disconnect and shutdown, the just-in-time rule (a fake clock), jobs block by block
between flight blocks. What reaches a flight from the delivery thread is in test_delivery.py; the default path with
the real pipeline in test_session.py."""
import dataclasses
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from server.generation.engine import Engine
from server.generation.flight import ChunkFrames, Flight, MoreFrames
from server.generation.generators import Generator, GenRequest, PipelineGenerator
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


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TimedGenerator(RecordingGenerator):
    """Each chunk takes ``seconds`` of the fake clock (the worker's time is simulated, so the load of the machine
    that runs the test changes nothing)."""

    def __init__(self, world, clock, seconds):
        super().__init__(world)
        self.clock, self.seconds = clock, seconds

    def generate(self, request, progress=None):
        self.clock.now += self.seconds
        return super().generate(request, progress)


def simulate_flight(random_world, tmp_path, gen_s, until_s, fps=16):
    """The engine's worker loop on a fake clock: (chunk start times, stalls) of one flight over ``until_s``."""
    clock = FakeClock()
    world = dataclasses.replace(random_world, fps=fps)
    generator = TimedGenerator(world, clock, gen_s)
    engine = Engine(generator, Settings(recordings_dir=str(tmp_path), gradio=False), clock=clock)
    engine.add_flight(flight("solo", world))
    starts = []
    try:
        while clock.now < until_s:
            with engine._cond:
                kind, item = engine._pick()
            if kind is None:
                assert item is not None and item > 0, item  # waits for the flight to be due
                clock.now += item
                continue
            starts.append(round(clock.now, 4))
            engine._run_flight(item)
    finally:
        engine.close()
    return starts, engine.metrics.value("wanfly_stalls_total")


def test_pacing_does_not_run_ahead_of_playback(random_world, tmp_path):
    """A chunk plays 8 / 16 = 0.5 s (the first 9 frames); with a 200 ms generator the next chunk starts one chunk of
    playback before the client runs out (the look-ahead): 7 chunks, no stall in 3 s. Without the look-ahead a
    chunk starts only when the previous one has played out: 4 chunks and 3 stalls. Running ahead (no pacing at
    all) would start one every 200 ms: 15 chunks."""
    starts, stalls = simulate_flight(random_world, tmp_path, gen_s=0.2, until_s=3.0)
    assert starts == [0.0, 0.2625, 0.7625, 1.2625, 1.7625, 2.2625, 2.7625], starts
    assert stalls == 0


def test_a_generator_slower_than_playback_stalls_every_chunk(random_world, tmp_path):
    """A 600 ms generator for 500 ms chunks: each chunk starts as soon as it is due (0.5 s before the previous one
    plays out, at once from the second on) and every chunk after the first is 100 ms late: a stall each."""
    starts, stalls = simulate_flight(random_world, tmp_path, gen_s=0.6, until_s=3.0)
    assert starts == [0.0, 0.6625, 1.2625, 1.8625, 2.4625], starts
    assert stalls == 4


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


# ---- causal worlds: one stream per flight, one block per turn ------------------------------------------------
class CountingGenerator(PipelineGenerator):
    """The real tiny pipeline; counts the streams it opens and closes, and can fail a flight's nth block."""

    def __init__(self, world, fail_at=None, fail_decode_at=None):
        super().__init__(world)
        self.opened, self.closed, self.blocks, self.fail_at = [], [], [], fail_at
        self.fail_decode_at = fail_decode_at  # the nth latent frame's decode fails (after frame 0's, at opening)

    def open_stream(self, prompt, image, seed, steps):
        stream = super().open_stream(prompt, image, seed, steps)
        generator, step_iter, close = self, stream.step_iter, stream.close
        if self.fail_decode_at is not None:
            push, pushed = stream.decoder.push, []

            def failing_push(latents):
                pushed.append(1)
                if len(pushed) == generator.fail_decode_at:
                    raise RuntimeError("decoder out of memory")
                return push(latents)
            stream.decoder.push = failing_push

        def counted_step_iter(actions):
            generator.blocks.append(prompt)
            if generator.fail_at is not None and stream.blocks == generator.fail_at:
                raise RuntimeError("out of memory")
            yield from step_iter(actions)

        def counted_close():
            generator.closed.append(prompt)
            close()
        stream.step_iter, stream.close = counted_step_iter, counted_close
        self.opened.append(prompt)
        return stream


def causal_engine(causal_world, tmp_path, fps=1000, fail_at=None, fail_decode_at=None, decode_overlap=False,
                  **settings):
    torch.set_num_threads(1)  # as the server on 2 cores (conftest gives the test's own back)
    world = dataclasses.replace(causal_world, fps=fps, decode_overlap=decode_overlap)
    generator = CountingGenerator(world, fail_at, fail_decode_at)
    engine = Engine(generator, Settings(recordings_dir=str(tmp_path), gradio=False, **settings))
    return engine, generator


def causal_flight(name, world, events):
    return Flight(prompt=name, image=Image.new("RGB", (world.width, world.height)), seed=0, steps=1,
                  timeline=InputTimeline(world.full_scale, world.fps), notify=events.append, stream=True)


def wait_for(predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def chunks_of(events):
    return [e.chunk for e in events if isinstance(e, ChunkFrames)]


def test_a_causal_flight_is_one_stream_one_block_per_turn_recorded_as_sent(causal_world, tmp_path):
    engine, generator = causal_engine(causal_world, tmp_path)
    events = []
    solo = causal_flight("solo", generator.world, events)
    engine.add_flight(solo)
    engine.start()
    try:
        assert wait_for(lambda: len(chunks_of(events)) >= 4)
        engine.finish_flight(solo)
        assert wait_for(lambda: any(isinstance(e, Recording) for e in events))
    finally:
        engine.close()
    chunks = chunks_of(events)
    assert [(c.index, c.frames, c.first_frame) for c in chunks[:3]] == [(0, 5, 0), (1, 4, 5), (2, 4, 9)]
    assert all(np.array(c.actions).shape == (1, 2, 8) for c in chunks)  # one (block_frames, 2, 8) per block
    sent = sum(len(e.frames) for e in events if isinstance(e, ChunkFrames | MoreFrames))
    assert sent == 1 + 4 * len(chunks)  # frame 0 once, then 4 per block: nothing repeated
    recording = next(e for e in events if isinstance(e, Recording))
    assert (recording.frames, recording.chunks) == (sent, len(chunks))
    record = json.loads((engine.recordings.folder / f"{recording.id}.json").read_text())
    assert len(record["actions"]) == len(chunks) and record["frames"] == sent  # one step per 4 frames after frame 0
    assert generator.opened == ["solo"] and generator.closed == ["solo"] and solo.world_stream is None
    assert engine.metrics.value("wanfly_streams_open") == 0


def fly_solo(engine, generator, blocks):
    """A causal flight until ``blocks`` chunks arrived, then stopped: its events once its recording is offered."""
    events = []
    solo = causal_flight("solo", generator.world, events)
    engine.add_flight(solo)
    engine.start()
    try:
        assert wait_for(lambda: len(chunks_of(events)) >= blocks)
        engine.finish_flight(solo)
        assert wait_for(lambda: any(isinstance(e, Recording) for e in events))
    finally:
        engine.close()
    assert generator.closed == ["solo"] and solo.world_stream is None
    return events


def test_the_decode_lane_sends_the_same_frames_in_the_same_order(causal_world, tmp_path):
    """``World.decode_overlap`` (on by default with CUDA): each block decodes on its stream's lane (here its thread,
    on a GPU a second CUDA stream) while the worker goes on; the flight gets exactly the bytes, chunk numbers and
    frame order of the inline path."""
    sent = {}
    for overlap in (False, True):
        engine, generator = causal_engine(causal_world, tmp_path / str(overlap), decode_overlap=overlap)
        events = fly_solo(engine, generator, 5)
        assert generator.opened == ["solo"] and engine.metrics.value("wanfly_streams_open") == 0
        frames = [jpeg for e in events if isinstance(e, ChunkFrames | MoreFrames) for jpeg in e.frames]
        recording = next(e for e in events if isinstance(e, Recording))
        assert recording.frames == len(frames)
        sent[overlap] = frames, [(c.index, c.frames, c.first_frame) for c in chunks_of(events)]
    assert (len(generator.blocks), len(sent[True][0])) == (0, recording.frames)  # step_async, not step_iter
    assert sent[False][1][:5] == sent[True][1][:5] == [(0, 5, 0), (1, 4, 5), (2, 4, 9), (3, 4, 13), (4, 4, 17)]
    shared = min(len(sent[False][0]), len(sent[True][0]))
    assert shared >= 21 and sent[True][0][:shared] == sent[False][0][:shared]


def test_a_failing_decode_on_the_lane_stops_its_flight_with_an_error(causal_world, tmp_path):
    """The lane decodes at most one block behind the worker; a failed decode stops the flight before any later
    chunk opens (its frames, and the next block's, never go out)."""
    engine, generator = causal_engine(causal_world, tmp_path, fail_decode_at=3, decode_overlap=True)
    events = []
    failing = causal_flight("failing", generator.world, events)
    engine.add_flight(failing)
    engine.start()
    try:
        assert wait_for(lambda: any(isinstance(e, Error) for e in events))  # its third block's decode failed
        assert wait_for(lambda: failing.world_stream is None) and generator.closed == ["failing"]
        assert failing.decoding is None
        assert wait_for(lambda: any(isinstance(e, Recording) for e in events))
    finally:
        engine.close()
    assert next(e for e in events if isinstance(e, Error)).code == "generation_failed"
    assert [c.index for c in chunks_of(events)] == [0, 1]  # the failed block's frames never went out
    sent = sum(len(e.frames) for e in events if isinstance(e, ChunkFrames | MoreFrames))
    assert sent == 9 and next(e for e in events if isinstance(e, Recording)).frames == sent  # recorded as sent
    assert engine.metrics.value("wanfly_streams_open") == 0


def test_two_causal_flights_take_turns_block_by_block(causal_world, tmp_path):
    engine, generator = causal_engine(causal_world, tmp_path)
    events = {"a": [], "b": []}
    for name in "ab":
        engine.add_flight(causal_flight(name, generator.world, events[name]))
    engine.start()
    try:
        assert wait_for(lambda: len(generator.blocks) >= 8)
    finally:
        engine.close()
    assert generator.blocks[:8] == list("abababab")  # one block each in turn
    assert sorted(generator.opened) == ["a", "b"] and sorted(generator.closed) == ["a", "b"]  # closed at shutdown


def test_a_causal_flight_stream_closes_on_error_and_disconnect_and_waiting_flights_hold_none(causal_world, tmp_path):
    engine, generator = causal_engine(causal_world, tmp_path, fail_at=2, max_sessions=1)
    failing_events, waiting_events = [], []
    failing = causal_flight("failing", generator.world, failing_events)
    waiting = causal_flight("waiting", generator.world, waiting_events)
    engine.add_flight(failing)
    assert engine.add_flight(waiting) == 1
    engine.start()
    try:
        assert wait_for(lambda: any(isinstance(e, Error) for e in failing_events))  # its third block failed
        assert wait_for(lambda: failing.world_stream is None) and generator.closed[:1] == ["failing"]
        assert wait_for(lambda: len(chunks_of(waiting_events)) >= 1)  # the waiting flight took the free slot
        engine.remove_flight(waiting)  # its connection is gone
        assert wait_for(lambda: generator.closed == ["failing", "waiting"])
    finally:
        engine.close()
    assert generator.opened == ["failing", "waiting"] and engine.metrics.value("wanfly_streams_open") == 0
    assert next(e for e in failing_events if isinstance(e, Error)).code == "generation_failed"


def test_a_causal_flight_is_due_when_its_playback_left_is_down_to_the_lead(causal_world, tmp_path):
    now = [100.0]
    world = dataclasses.replace(causal_world, fps=8)  # a block plays 4 / 8 = 0.5 s
    engine = Engine(CountingGenerator(world), Settings(recordings_dir=str(tmp_path), gradio=False,
                                                       block_margin_s=0.1), clock=lambda: now[0])
    a, b = causal_flight("a", world, []), causal_flight("b", world, [])
    engine.add_flight(a)
    a.play_end = 101.0
    with engine._cond:
        assert engine.lead_s() == 0.5  # nothing measured yet: one block ahead
        kind, wait = engine._pick()
        assert kind is None and wait == pytest.approx(0.5)
        engine.pacer.observe(0.15, 0.2)
        assert engine.lead_s() == pytest.approx(0.25)  # the block's time to its first frames + the margin
        now[0] = 100.74
        assert engine._pick()[0] is None
        now[0] = 100.75
        assert engine._pick() == ("flight", a)
    engine.add_flight(b)
    b.play_end = 200.0
    with engine._cond:
        assert engine.lead_s() == pytest.approx(0.15 + 0.2 + 0.1)  # b's turn may come first
        now[0] = 100.54
        assert engine._pick()[0] is None
        now[0] = 100.55
        assert engine._pick() == ("flight", a)


def test_a_causal_job_is_one_stream_made_block_by_block_between_flight_blocks(causal_world, tmp_path):
    engine, generator = causal_engine(causal_world, tmp_path)
    world = generator.world
    engine.add_flight(causal_flight("flight", world, []))
    actions = np.zeros((5, 2, 8))
    actions[:, 0, 0], actions[:, 1, 0] = 1, 0.01  # forward
    job = engine.submit_job(GenRequest("job", Image.new("RGB", (64, 64)), actions, 21, 1, 0, 1.0))
    engine.start()
    try:
        assert job.done.wait(30)
        time.sleep(0.1)
    finally:
        engine.close()
    assert job.status == "done" and job.frames == 21  # 1 + 4 x 5 blocks
    job_turns = [i for i, name in enumerate(generator.blocks) if name == "job"]
    assert len(job_turns) == 5 and all(b - a == 2 for a, b in zip(job_turns, job_turns[1:]))  # a flight block between
    assert generator.opened.count("job") == 1 and generator.closed.count("job") == 1  # one stream, closed when done
