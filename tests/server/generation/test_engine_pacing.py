"""server.generation.engine's pacing on a fake clock, worker loop not started: which flight's turn comes next
(round-robin past paused and not-yet-due flights), how long the worker waits, the lead when jobs compete, and a
chunk's stall accounting and reported generation time."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from server.generation.engine import STALL_TOLERANCE_S, Engine
from server.generation.flight import Flight
from server.generation.generators import GenRequest
from server.inputs import InputTimeline
from server.settings import Settings
from tests.server.generation.test_engine import FakeClock, RecordingGenerator


def engine_for(world, tmp_path, **settings):
    clock = FakeClock()
    clock.now = 100.0
    return Engine(RecordingGenerator(world), Settings(recordings_dir=str(tmp_path), gradio=False, **settings),
                  clock=clock), clock


def flight(name, world, play_end, paused=False):
    f = Flight(prompt=name, image=Image.new("RGB", (world.width, world.height)), seed=0, steps=1,
               timeline=InputTimeline(world.full_scale, world.fps), notify=lambda event: None)
    f.play_end, f.paused = play_end, paused
    return f


def job_request(world):
    return GenRequest("job", Image.new("RGB", (world.width, world.height)), None, 9, 1, 0, 1.0)


@pytest.fixture
def chunked(random_world, tmp_path):
    world = dataclasses.replace(random_world, fps=16)  # a chunk of 9 frames plays 0.5 s: the lead
    engine, clock = engine_for(world, tmp_path, max_sessions=4)
    yield engine, clock, world
    engine.close()


def add(engine, *flights):
    for f in flights:
        engine.add_flight(f)
    return flights


def test_the_turn_goes_to_the_next_due_flight_after_the_last_one(chunked):
    engine, clock, world = chunked
    a, b, c = add(engine, flight("a", world, 200.0), flight("b", world, 100.2), flight("c", world, 100.3))
    with engine._cond:
        assert engine._pick() == ("flight", b)  # a is not due (its playback lasts), b is the first due after it
        assert engine._pick() == ("flight", c)  # the round-robin goes on after b, not back to it
        a.play_end = 100.0
        assert engine._pick() == ("flight", a)


def test_a_paused_flight_is_skipped_not_a_stop(chunked):
    engine, clock, world = chunked
    a, b = add(engine, flight("a", world, 100.0, paused=True), flight("b", world, 100.0))
    with engine._cond:
        assert engine._pick() == ("flight", b)


def test_the_worker_waits_until_the_soonest_flight_is_due(chunked):
    engine, clock, world = chunked
    add(engine, flight("a", world, 100.9), flight("b", world, 100.6), flight("c", world, 100.8))
    with engine._cond:
        kind, wait = engine._pick()
    assert kind is None and wait == pytest.approx(0.1)  # b: 100.6 - 0.5 s lead - 100.0


def test_a_queued_job_takes_a_turn(chunked):
    engine, clock, world = chunked
    job = engine.submit_job(job_request(world))
    with engine._cond:
        assert engine._pick() == ("job", job)


def test_a_job_counts_as_one_more_turn_in_the_causal_lead(random_world, tmp_path):
    world = dataclasses.replace(random_world, generation="causal", chunk_frames=5, fps=8)
    engine, clock = engine_for(world, tmp_path, block_margin_s=0.1, max_sessions=4)
    try:
        engine.pacer.observe(0.15, 0.2)
        add(engine, flight("a", world, 200.0))
        with engine._cond:
            assert engine.lead_s() == pytest.approx(0.25)  # alone: its first frames + the margin
        engine.submit_job(job_request(world))
        with engine._cond:
            assert engine.lead_s() == pytest.approx(0.45)  # a queued job's turn may come first
            engine._job = engine._queued_jobs.popleft()
            assert engine.lead_s() == pytest.approx(0.45)  # so may a running job's next part
        add(engine, flight("b", world, 200.0), flight("c", world, 200.0, paused=True))
        with engine._cond:
            assert engine.lead_s() == pytest.approx(0.65)  # b and the job; paused c takes no turn
    finally:
        engine.close()


def test_a_chunk_is_a_stall_only_past_the_tolerance_and_reports_its_time_in_ms(chunked):
    engine, clock, world = chunked
    (a,) = add(engine, flight("a", world, 0.0))
    raw = np.zeros((2, 2, 8), np.float32)
    a.index, a.play_end = 1, 100.0
    clock.now = 100.0 + STALL_TOLERANCE_S  # exactly at the tolerance: on time
    chunk = engine._open_chunk(a, raw, 3, 0.123456, {})
    assert engine.metrics.value("wanfly_stalls_total") == 0
    assert chunk.message.gen_ms == 123.46 and chunk.message.input_seq == 3 and chunk.message.index == 1
    a.play_end = clock.now + STALL_TOLERANCE_S / 2  # playback not yet out
    engine._open_chunk(a, raw, 4, 0.2, {})
    assert engine.metrics.value("wanfly_stalls_total") == 0
    clock.now = a.play_end + 2 * STALL_TOLERANCE_S
    engine._open_chunk(a, raw, 5, 0.2, {})
    assert engine.metrics.value("wanfly_stalls_total") == 1
