"""bench.cluster: per-replica metrics summed, the speedup of the last replica count over the first, its result
valid in the schema. The runs themselves are stubbed (a real run starts Ray twice: minutes, run by hand)."""
import json

import pytest

from bench import cluster
from bench.schema import validate
from server.bindings import INPUT_HZ


def run(replicas: int, frames_per_s: float) -> dict:
    return {"replicas": replicas, "sessions": 2, "seconds": 20.0, "frames": int(20 * frames_per_s),
            "frames_per_s": frames_per_s, "frames_per_s_per_session": [frames_per_s / 2] * 2,
            "replicas_used": replicas, "chunk_ms_median": 180.0, "chunk_play_ms": 125.0, "chunks": 80,
            "chunk_s_total": 14.4, "cpu_share": 0.9 * replicas,
            "frames_per_cpu_s": frames_per_s / (0.9 * replicas), "generation": "chunked", "fps": 64, "size": [64, 64]}


def test_summed_adds_a_family_over_the_replicas_only():
    metrics = {'wanfly_chunk_seconds_count{replica="a"}': 3.0, 'wanfly_chunk_seconds_count{replica="b"}': 4.0,
               "wanfly_chunk_seconds_count": 100.0, 'wanfly_chunk_seconds_count_x{replica="a"}': 9.0,
               'wanfly_cluster_chunk_seconds_count': 7.0}
    assert cluster.summed(metrics, "wanfly_chunk_seconds_count") == 7.0


def test_speedup_goal_and_a_valid_result(monkeypatch, tmp_path, capsys):
    rates = {1: 10.0, 2: 18.5}
    seen = []

    def one_run(replicas, sessions, seconds, server_args, log_path=None, input_hz=None):
        seen.append((replicas, sessions, seconds, tuple(server_args), log_path, input_hz))
        return run(replicas, rates[replicas])
    monkeypatch.setattr(cluster, "one_run", one_run)
    out = tmp_path / "cluster.json"
    assert cluster.main(["--seconds", "20", "--rounds", "1", "--out", str(out), "--log", "/tmp/x",
                         "--world", "random"]) == 0
    assert seen == [(1, 2, 20.0, (*cluster.BENCH_DEFAULTS, "--world", "random"), "/tmp/x.1", INPUT_HZ),
                    (2, 2, 20.0, (*cluster.BENCH_DEFAULTS, "--world", "random"), "/tmp/x.2", INPUT_HZ)]
    result = validate(json.loads(out.read_text()))
    figures = {f["name"]: (f["value"], f["unit"]) for f in result["figures"]}
    assert figures["speedup"] == (1.85, "ratio")
    assert figures["replicas_1.frames_per_s"] == (10.0, "frames/s")
    assert figures["replicas_2.cpu_share"] == (1.8, "ratio")
    assert result["details"]["goal_met"] is True and result["settings"]["replicas"] == [1, 2]
    rates[2] = 16.0
    cluster.main(["--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text())["details"]["goal_met"] is False  # 1.6 < 1.7


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
                                           (["--input_hz", "0"], "--input_hz: must be > 0, got 0.0")])
def test_bad_options_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cluster.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
