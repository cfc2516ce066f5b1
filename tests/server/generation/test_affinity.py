"""server.generation.affinity and --cpu_cores: the core lists, each replica's own cores, and the engine's worker
pinned (only it: the rest of the process keeps every core)."""
import os
import threading

import pytest
from PIL import Image

from server.generation.affinity import (
    available_cores,
    check_cores,
    format_cores,
    parse_cores,
    pin_this_thread,
    replica_cores,
)
from server.generation.generators import GenRequest
from server.settings import Settings
from tests.server.generation.test_engine import make_engine

linux_two_cores = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(available_cores()) < 2,
                                     reason="pinning needs Linux and two cores to tell")


@pytest.mark.parametrize("text, cores", [
    (None, []), ("", []), ("3", [3]), ("0-3", [0, 1, 2, 3]), ("0,2,4", [0, 2, 4]), ("6, 0-1", [0, 1, 6]),
    ("1,1", [1]),
])
def test_core_lists(text, cores):
    assert parse_cores(text) == cores
    assert parse_cores(format_cores(cores)) == cores


@pytest.mark.parametrize("text, names", [
    ("x", "cpu_cores: expected core numbers and ranges like 0-3,6, got 'x'"),
    ("1-", "cpu_cores: expected"), ("-1", "cpu_cores: expected"), ("3-1", "cpu_cores: the range '3-1' runs backwards"),
])
def test_bad_core_lists_are_refused_by_name(text, names):
    with pytest.raises(ValueError, match=names):
        parse_cores(text)
    with pytest.raises(ValueError, match="cpu_cores"):
        Settings(cpu_cores=text)


def test_each_replica_takes_its_own_cores_in_turn():
    assert [replica_cores(rank, 1, [0, 1]) for rank in range(3)] == [[0], [1], [0]]  # a third replica shares
    assert [replica_cores(rank, 2, [2, 3, 4, 5]) for rank in range(2)] == [[2, 3], [4, 5]]
    assert replica_cores(0, 4, [0, 1]) == [0, 1]  # more threads than cores: every core once
    with pytest.raises(ValueError, match="replica_cores"):
        replica_cores(0, 0, [0, 1])


def test_cores_this_machine_lacks_are_refused_by_name():
    absent = max(available_cores()) + 1
    with pytest.raises(ValueError, match=rf"cpu_cores: core\(s\) \[{absent}\] are not available here"):
        check_cores(str(absent))
    assert check_cores(None) == [] and check_cores(str(available_cores()[0])) == [available_cores()[0]]


@linux_two_cores
def test_pinning_a_thread_leaves_the_others_free():
    before, seen = set(available_cores()), {}

    def worker():
        pin_this_thread([min(before)])
        seen["worker"] = os.sched_getaffinity(0)
        inner = threading.Thread(target=lambda: seen.update(child=os.sched_getaffinity(0)))
        inner.start()
        inner.join()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"worker": {min(before)}, "child": {min(before)}}  # threads it starts inherit its cores
    assert os.sched_getaffinity(0) == before


@linux_two_cores
def test_the_engine_worker_generates_on_its_cores(random_world, tmp_path):
    engine, generator = make_engine(random_world, tmp_path, cpu_cores=str(available_cores()[-1]))
    seen = []
    original = generator.generate

    def generate(request, progress=None):
        seen.append(os.sched_getaffinity(0))
        return original(request, progress)

    generator.generate = generate
    world = generator.world
    job = engine.submit_job(GenRequest("job", Image.new("RGB", (world.width, world.height)), None, 9, 1, 0, 1.0))
    engine.start()
    try:
        assert job.done.wait(10) and job.status == "done"
    finally:
        engine.close()
    assert seen == [{available_cores()[-1]}]
    assert os.sched_getaffinity(0) == set(available_cores())


def test_an_engine_with_cores_this_machine_lacks_is_refused_before_it_starts(random_world, tmp_path):
    absent = str(max(available_cores()) + 1)
    with pytest.raises(ValueError, match="cpu_cores"):
        make_engine(random_world, tmp_path, cpu_cores=absent)
