"""bench.cluster: per-replica metrics summed, the speedup of the last replica count over the first, the machine's
own scaling without serving, its result valid in the schema. The served runs and the no-serving loops are stubbed
(a real run starts Ray twice: minutes, run by hand); one chunk loop runs for real."""
import json
import os
import threading

import pytest

from bench import cluster
from bench.schema import validate
from server.bindings import INPUT_HZ
from server.generation.affinity import available_cores

REAL_BARE_SCALING = cluster.bare_scaling  # the autouse fixture stubs it in the module


def run(replicas: int, frames_per_s: float) -> dict:
    return {"replicas": replicas, "sessions": 2, "seconds": 20.0, "frames": int(20 * frames_per_s),
            "frames_per_s": frames_per_s, "frames_per_s_per_session": [frames_per_s / 2] * 2,
            "replicas_used": replicas, "chunk_ms_median": 180.0, "chunk_play_ms": 125.0, "chunks": 80,
            "chunk_s_total": 14.4, "cpu_share": 0.9 * replicas,
            "frames_per_cpu_s": frames_per_s / (0.9 * replicas), "generation": "chunked", "fps": 64, "size": [64, 64]}


@pytest.fixture(autouse=True)
def bare(monkeypatch):
    """The no-serving loops, stubbed (real ones: ``test_chunk_loop_times_the_world_without_a_server``)."""
    calls = []

    def bare_scaling(counts, seconds, server_args, pin=True):
        calls.append((tuple(counts), seconds, pin))
        return {"loops": {}, "speedup": 1.9}
    monkeypatch.setattr(cluster, "bare_scaling", bare_scaling)
    return calls


def test_summed_adds_a_family_over_the_replicas_only():
    metrics = {'wanfly_chunk_seconds_count{replica="a"}': 3.0, 'wanfly_chunk_seconds_count{replica="b"}': 4.0,
               "wanfly_chunk_seconds_count": 100.0, 'wanfly_chunk_seconds_count_x{replica="a"}': 9.0,
               'wanfly_cluster_chunk_seconds_count': 7.0}
    assert cluster.summed(metrics, "wanfly_chunk_seconds_count") == 7.0


def test_speedup_goal_and_a_valid_result(monkeypatch, tmp_path, capsys, bare):
    rates = {1: 10.0, 2: 18.5}
    seen = []

    def one_run(replicas, sessions, seconds, server_args, log_path=None, input_hz=None):
        seen.append((replicas, sessions, seconds, tuple(server_args), log_path, input_hz))
        return run(replicas, rates[replicas])
    monkeypatch.setattr(cluster, "one_run", one_run)
    out = tmp_path / "cluster.json"
    assert cluster.main(["--seconds", "20", "--rounds", "1", "--out", str(out), "--log", "/tmp/x",
                         "--world", "random"]) == 0
    pinned = (*cluster.BENCH_DEFAULTS, "--world", "random", "--pin_cores", "1")  # the replicas pin their workers
    assert seen == [(1, 2, 20.0, pinned, "/tmp/x.1", INPUT_HZ), (2, 2, 20.0, pinned, "/tmp/x.2", INPUT_HZ)]
    result = validate(json.loads(out.read_text()))
    figures = {f["name"]: (f["value"], f["unit"]) for f in result["figures"]}
    assert figures["speedup"] == (1.85, "ratio")
    assert figures["replicas_1.frames_per_s"] == (10.0, "frames/s")
    assert figures["replicas_2.cpu_share"] == (1.8, "ratio")
    assert figures["bare_speedup"] == (1.9, "ratio") and figures["of_bare"] == (round(1.85 / 1.9, 3), "ratio")
    assert bare == [((1, 2), 40.0, True)]  # the bare loops too
    assert result["details"]["goal_met"] is True and result["settings"]["replicas"] == [1, 2]
    rates[2] = 16.0
    cluster.main(["--rounds", "1", "--out", str(out), "--bare_s", "0"])
    result = json.loads(out.read_text())
    assert result["details"]["goal_met"] is False  # 1.6 < 1.7
    assert "bare" not in result["details"] and len(bare) == 1  # --bare_s 0: no loops


def test_rounds_alternate_the_counts_and_the_median_ratio_decides(monkeypatch, tmp_path):
    """A machine whose speed drifts: each round's ratio is taken within the round, the headline is their median."""
    rates = iter([10.0, 18.0, 20.0, 30.0, 12.0, 21.6])  # ratios 1.8, 1.5, 1.8 (a slow spell in round 2)
    seen = []

    def one_run(replicas, sessions, seconds, server_args, log_path=None, input_hz=None):
        seen.append((replicas, log_path))
        return run(replicas, next(rates))
    monkeypatch.setattr(cluster, "one_run", one_run)
    out = tmp_path / "cluster.json"
    assert cluster.main(["--rounds", "3", "--out", str(out), "--log", "/tmp/x"]) == 0
    assert seen == [(1, "/tmp/x.1.0"), (2, "/tmp/x.2.0"), (1, "/tmp/x.1.1"), (2, "/tmp/x.2.1"),
                    (1, "/tmp/x.1.2"), (2, "/tmp/x.2.2")]
    result = validate(json.loads(out.read_text()))
    details = result["details"]
    assert details["speedup_rounds"] == [1.8, 1.5, 1.8] and details["speedup"] == 1.8 and details["goal_met"]
    assert [r["round"] for r in details["runs"]] == [0, 0, 1, 1, 2, 2]
    figures = {f["name"]: f["value"] for f in result["figures"]}
    assert (figures["speedup_min"], figures["speedup_max"]) == (1.5, 1.8)
    assert figures["replicas_1.frames_per_s"] == 14.0 and figures["replicas_2.frames_per_s"] == 23.2
    assert details["by_replicas"]["replicas_2"]["frames_per_s_rounds"] == [18.0, 30.0, 21.6]
    assert result["settings"]["rounds"] == 3


def test_flights_that_shared_a_replica_do_not_meet_the_goal(monkeypatch, tmp_path):
    """Two replicas whose flights both landed on one of them measured one replica: the run says so."""
    seen = []

    def one_run(replicas, sessions, seconds, server_args, log_path=None, input_hz=None):
        seen.append(input_hz)
        return dict(run(replicas, 10.0 * replicas), replicas_used=1)
    monkeypatch.setattr(cluster, "one_run", one_run)
    out = tmp_path / "cluster.json"
    assert cluster.main(["--rounds", "1", "--input_hz", "5", "--out", str(out)]) == 0
    details = json.loads(out.read_text())["details"]
    assert details["speedup"] == 2.0 and details["spread"] is False and details["goal_met"] is False
    assert seen == [5.0, 5.0] and json.loads(out.read_text())["settings"]["input_hz"] == 5.0


@pytest.mark.parametrize("argv, message", [(["--rounds", "0"], "--rounds: at least 1, got 0"),
                                           (["--input_hz", "0"], "--input_hz: must be > 0, got 0.0"),
                                           (["--bare_s", "-1"], "--bare_s: 0 (skip) or more, got -1.0")])
def test_bad_options_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cluster.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_bare_scaling_is_the_chunks_of_the_last_count_over_the_first():
    seen = []

    def loops(count, seconds, server_args, pin):
        seen.append((count, seconds, tuple(server_args), pin))
        return [{"chunks": 10 if count == 1 else 9 + i, "cpu_ms_per_chunk": 100.0, "seconds": 5.0}
                for i in range(count)]
    result = REAL_BARE_SCALING([1, 2], 5.0, ["--steps", "2"], loops=loops)
    assert result["speedup"] == 1.9 and len(result["loops"]["2"]) == 2
    assert seen == [(1, 5.0, ("--steps", "2"), True), (2, 5.0, ("--steps", "2"), True)]


def test_chunk_loop_times_the_world_without_a_server():
    result = cluster.chunk_loop(["0.3", "--steps", "1", "--fps", "64"])
    assert result["chunks"] >= 1 and result["cpu_ms_per_chunk"] > 0 and result["seconds"] >= 0.3


@pytest.mark.skipif(len(available_cores()) < 2, reason="pinning needs two cores to tell")
def test_a_bare_loop_runs_on_the_core_its_replica_would_get():
    results = []  # in a thread of its own: the loop pins the thread that runs it
    thread = threading.Thread(target=lambda: results.append(cluster.chunk_loop(
        ["0.1", "--steps", "1", "--fps", "64", "--cpu_cores", str(available_cores()[-1])])))
    thread.start()
    thread.join()
    assert results[0]["cores"] == str(available_cores()[-1])
    assert os.sched_getaffinity(0) == set(available_cores())


def test_pin_cores_0_leaves_replicas_and_loops_unpinned(monkeypatch, tmp_path, bare):
    seen = []

    def one_run(replicas, sessions, seconds, server_args, log_path=None, input_hz=None):
        seen.append(tuple(server_args[-2:]))
        return run(replicas, 10.0 * replicas)
    monkeypatch.setattr(cluster, "one_run", one_run)
    assert cluster.main(["--rounds", "1", "--pin_cores", "0", "--out", str(tmp_path / "c.json")]) == 0
    assert seen == [("--pin_cores", "0")] * 2 and bare[0][2] is False
