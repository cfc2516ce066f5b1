"""bench.serving: its figures, the device it records, and its result, with the flight itself stubbed (a real
flight starts a server: `python -m bench.serving --seconds 1` takes ~10 s, run by hand)."""
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
    monkeypatch.setattr(serving, "run", lambda url, sessions, seconds, token: REPORT["flight"])
    out = tmp_path / "serving.json"
    assert serving.main(["--sessions", "2", "--seconds", "1", "--out", str(out), "--steps", "2"]) == 0
    assert started == [("--gradio", "0", "--steps", "2")]  # unknown options go to the server
    written = validate(json.loads(out.read_text()))
    assert written["bench"] == "serving" and written["device"]["kind"] == "cpu"
    assert written["settings"] == {"sessions": 2, "seconds": 1.0, "url": None, "server_args": ["--gradio", "0",
                                   "--steps", "2"], "world": {"name": "random"}}
    assert written["details"] == {"flight": REPORT["flight"]}
    assert {f["name"] for f in written["figures"]} >= {"flight.chunk_ms_p90", "flight.server_stalls"}
