"""bench.serving: its figures, the device it records, its result, and the first-minute / last-minute flatness of a
flight from /metrics samples, with the flight itself stubbed (a real flight starts a server: `python -m
bench.serving --seconds 1` takes ~10 s, run by hand)."""
import contextlib
import json

from bench import serving
from bench.schema import validate

REPORT = {"jpeg_only": {"64x64": {"ms": 0.0187, "bytes": 860}},
          "flight": {"sessions": 2, "fps": 16, "chunk_frames": 9, "size": [64, 64], "chunk_ms_median": 113.0,
                     "chunk_ms_p90": 133.3, "chunks": 7, "frames_per_s_per_session": [18.99, 17.5],
                     "first_frame_s": [0.065, None], "server_stalls": 0.0, "frames_dropped": 1.0,
                     "server_ms_per_frame": {"jpeg": 0.2688, "send": 0.0927, "total": 0.3614, "budget": 62.5}}}


def test_figures_per_session_with_units():
    figures = {f["name"]: (f["value"], f["unit"]) for f in serving.figures(REPORT)}
    assert figures["flight.chunk_ms_median"] == (113.0, "ms")
    assert figures["flight.frames_per_s_per_session.1"] == (17.5, "frames/s")
    assert figures["flight.first_frame_s.0"] == (0.065, "s") and "flight.first_frame_s.1" not in figures
    assert figures["flight.frames_dropped"] == (1.0, "count")
    assert figures["flight.server_ms_per_frame.budget"] == (62.5, "ms")
    assert figures["jpeg_only.64x64.bytes"] == (860, "bytes")


def test_the_started_server_runs_the_random_world_on_cpu():
    device = serving.server_device(["--gradio", "0"])
    assert device["kind"] == "cpu" and device["threads"] == 1  # server_process's default: one thread
    assert serving.server_device(["--threads", "3"])["threads"] == 3


def test_jpeg_sizes():
    sizes = serving.jpeg_sizes()
    assert list(sizes) == ["64x64", "128x128", "832x480"] and all(s["ms"] > 0 and s["bytes"] > 0
                                                                  for s in sizes.values())


def test_main_writes_the_result(tmp_path, monkeypatch):
    started = []

    @contextlib.contextmanager
    def fake_server(*args):
        started.append(args)
        yield "http://127.0.0.1:1"
    monkeypatch.setattr(serving, "server_process", fake_server)
    monkeypatch.setattr(serving, "readyz", lambda url: {"ready": True, "world": {"name": "random"}})
    monkeypatch.setattr(serving, "run", lambda url, sessions, seconds, token, sample_s: REPORT["flight"])
    out = tmp_path / "serving.json"
    assert serving.main(["--sessions", "2", "--seconds", "1", "--out", str(out), "--steps", "2"]) == 0
    assert started == [("--gradio", "0", "--steps", "2")]  # unknown options go to the server
    written = validate(json.loads(out.read_text()))
    assert written["bench"] == "serving" and written["device"]["kind"] == "cpu"
    assert written["settings"] == {"sessions": 2, "seconds": 1.0, "sample_s": None, "url": None,
                                   "server_args": ["--gradio", "0", "--steps", "2"], "world": {"name": "random"}}
    assert written["details"] == {"flight": REPORT["flight"]}
    assert {f["name"] for f in written["figures"]} >= {"flight.chunk_ms_p90", "flight.server_stalls"}


def metrics_at(count, total, cpu, rss, stalls=0):
    return {"wanfly_chunk_seconds_count": count, "wanfly_chunk_seconds_sum": total,
            "wanfly_chunk_cpu_seconds_total": cpu, "process_resident_memory_bytes": rss, "wanfly_stalls_total": stalls}


def test_flatness_compares_the_first_minute_with_the_last():
    # 2 blocks/s; blocks take 0.15 s (0.1 s of CPU) in the first minute, 0.18 s (0.1 s) later; RSS 100 -> 110 MiB
    samples, count, total, cpu = [], 0, 0.0, 0.0
    for t in range(0, 181, 30):
        rss = (90 if t == 0 else 100 + 10 * (t >= 120)) * 2**20  # before the flight's stream: less
        samples.append((float(t), metrics_at(count, total, cpu, rss, stalls=t // 60)))
        count, total, cpu = count + 60, total + 60 * (0.15 if t < 60 else 0.18), cpu + 60 * 0.1
    flat = serving.flatness(samples)
    first, last = flat["first_minute"], flat["last_minute"]
    assert (first["from_s"], first["to_s"], last["from_s"], last["to_s"]) == (0, 60, 120, 180)
    assert (first["chunk_ms_mean"], last["chunk_ms_mean"], flat["chunk_ms_ratio"]) == (150.0, 180.0, 1.2)
    assert (first["chunk_cpu_ms_mean"], flat["chunk_cpu_ms_ratio"]) == (100.0, 1.0)
    assert first["rss_bytes_median"] == 100 * 2**20 and flat["rss_ratio"] == 1.1  # the start's 90 MiB aside
    assert (first["stalls"], last["stalls"]) == (1, 1)
    assert serving.flatness(samples[:4]) is None  # 90 s: shorter than two minutes
    rows = serving.intervals(samples[:3])
    assert rows == [{"t_s": 30.0, "chunks": 60, "chunk_ms_mean": 150.0, "chunk_cpu_ms_mean": 100.0, "stalls": 0,
                     "rss_mb": 100.0},
                    {"t_s": 60.0, "chunks": 60, "chunk_ms_mean": 150.0, "chunk_cpu_ms_mean": 100.0, "stalls": 1,
                     "rss_mb": 100.0}]
    figures = {f["name"]: (f["value"], f["unit"]) for f in serving.figures({"flight": {"flatness": flat}})}
    assert figures["flight.flatness.chunk_ms_ratio"] == (1.2, "ratio")
    assert figures["flight.flatness.chunk_cpu_ms_ratio"] == (1.0, "ratio")
    assert figures["flight.flatness.last_minute.rss_bytes_median"] == (110 * 2**20, "bytes")
