"""server.cluster.board: replicas serving by their reports, jobs and recordings any ingress serves, and the
cluster-wide /readyz and /metrics made from the reports (real Metrics texts). In process, no Ray: the board keeps
the bytes itself (``put``/``get`` identity) instead of Ray's object store."""
import re

import pytest

from server.cluster.board import FORGET_S, STALE_S, Board, cluster_view, merge_metrics, with_label
from server.metrics import Metrics


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def board(clock):
    return Board(jobs_kept=2, recordings_kept=1, put=lambda data: data, get=lambda ref: ref, clock=clock)


def info(active=0, waiting=0, max_sessions=2, max_waiting=1):
    return {"pid": 1, "host": "h", "active": active, "waiting": waiting, "jobs_queued": 0,
            "max_sessions": max_sessions, "max_waiting": max_waiting}


def view(job_id, status="queued", **more):
    return {"id": job_id, "status": status, "progress": 0.0, "position": 1, "error": None, **more}


def test_a_replica_serves_while_it_reports(board, clock):
    board.report("a", info(active=1), "metrics of a")
    board.report("b", info(waiting=1), "metrics of b")
    assert [(r["replica"], r["active"], r["metrics"]) for r in board.serving()] == [("a", 1, "metrics of a"),
                                                                                     ("b", 0, "metrics of b")]
    clock.now += STALE_S - 0.5
    board.report("b", info())
    clock.now += 1.0  # a: silent for longer than STALE_S
    assert [r["replica"] for r in board.serving()] == ["b"]
    view_ = cluster_view(board.serving(), target=2)
    assert (view_["replicas_serving"], view_["degraded"], view_["sessions"]["max_sessions"]) == (1, True, 2)
    clock.now += FORGET_S
    board.report("c", info())
    assert [r["replica"] for r in board.serving()] == ["c"]


def test_serve_states_count_a_dead_replica_before_its_report_is_stale(board):
    board.report("a", info())
    board.report("b", info())
    assert cluster_view(board.serving(), 2)["degraded"] is False
    view_ = cluster_view(board.serving(), 2, states={"RUNNING": 1, "STARTING": 1})
    assert (view_["replicas_serving"], view_["degraded"], view_["replica_states"]) == (1, True, {"RUNNING": 1,
                                                                                                 "STARTING": 1})
    assert [r["replica"] for r in view_["replicas"]] == ["a", "b"] and "metrics" not in view_["replicas"][0]


def test_jobs_from_any_ingress(board, clock):
    board.report("a", info())
    board.put_job("a", view("j1"))
    assert board.job("j1")["status"] == "queued" and board.job_video("j1") is None
    board.report("a", info(), jobs=[view("j1", "running", progress=0.5)])
    assert board.job("j1")["progress"] == 0.5
    board.put_job("a", view("j1", "done", progress=1.0), b"mp4 bytes")
    board.report("a", info(), jobs=[view("j1", "running")])  # a late report never reopens a finished job
    assert board.job("j1")["status"] == "done" and board.job_video("j1") == b"mp4 bytes"
    assert board.job("nope") is None and board.job_video("nope") is None


def test_a_job_of_a_replica_that_stopped_reads_as_failed(board, clock):
    board.put_job("a", view("j1", "queued"))  # before a's first report: a is alive
    clock.now += STALE_S - 1
    assert board.job("j1")["status"] == "queued"
    board.report("a", info(), jobs=[view("j1", "running")])
    clock.now += STALE_S + 1
    failed = board.job("j1")
    assert failed["status"] == "failed" and "replica a running the job stopped" in failed["error"]


def test_only_the_newest_finished_jobs_and_recordings_are_kept(board):
    for i in range(3):
        board.put_job("a", view(f"j{i}", "done"), b"%d" % i)
    board.put_job("a", view("running"))
    assert [board.job(f"j{i}") is not None for i in range(3)] == [False, True, True]
    assert board.job("running")["status"] == "queued"  # unfinished jobs are never dropped
    board.put_recording("r1", b"video1", b"{}")
    board.put_recording("r2", b"video2", b'{"frames": 9}')
    assert board.recording("r1", ".mp4") is None
    assert (board.recording("r2", ".mp4"), board.recording("r2", ".json")) == (b"video2", b'{"frames": 9}')


def rendered(active: int, chunks: list[float]) -> str:
    metrics = Metrics()
    metrics.set("wanfly_sessions_active", active)
    metrics.inc("wanfly_errors_total", code="busy")
    for seconds in chunks:
        metrics.observe_chunk(seconds)
    return metrics.render()


def test_metrics_per_replica_and_in_total():
    serving = [dict(info(active=2, waiting=1, max_sessions=2), replica="b", metrics=rendered(2, [0.2, 3.0])),
               dict(info(active=1, max_sessions=2), replica="a", metrics=rendered(1, [0.2]))]
    text = merge_metrics(serving, target=3)
    lines = text.splitlines()
    assert lines.count("# HELP wanfly_sessions_active flight sessions generating") == 1
    assert 'wanfly_sessions_active{replica="a"} 1' in lines and 'wanfly_sessions_active{replica="b"} 2' in lines
    assert 'wanfly_errors_total{replica="a",code="busy"} 1' in lines
    assert {'wanfly_cluster_replicas{state="target"} 3', 'wanfly_cluster_replicas{state="serving"} 2',
            "wanfly_cluster_sessions_active 3", "wanfly_cluster_sessions_queued 1",
            "wanfly_cluster_max_sessions 4"} <= set(lines)
    assert 'wanfly_cluster_chunk_seconds_bucket{le="0.25"} 2' in lines
    assert 'wanfly_cluster_chunk_seconds_bucket{le="+Inf"} 3' in lines
    assert "wanfly_cluster_chunk_seconds_count 3" in lines
    assert "wanfly_cluster_chunk_seconds_sum 3.4" in lines
    families = [line.split()[2] for line in lines if line.startswith("# TYPE ")]
    assert len(families) == len(set(families))  # one HELP/TYPE per family, as Prometheus requires
    sample = re.compile(r'^[a-z_:]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')
    assert all(sample.match(line) for line in lines if not line.startswith("#")), text


def test_metrics_text_parses_as_prometheus():
    parser = pytest.importorskip("prometheus_client.parser")
    serving = [dict(info(active=1), replica="a", metrics=rendered(1, [0.5]))]
    families = {f.name: f for f in parser.text_string_to_metric_families(merge_metrics(serving, target=1))}
    assert families["wanfly_sessions_active"].samples[0].labels == {"replica": "a"}
    assert families["wanfly_cluster_chunk_seconds"].type == "histogram"


def test_with_label_refuses_what_is_not_a_sample():
    assert with_label("x 1", "replica", "a") == 'x{replica="a"} 1'
    with pytest.raises(ValueError, match="not a Prometheus sample line"):
        with_label("x{broken 1", "replica", "a")
