"""bench.chunk_latency at its smallest settings (tiny preset, CPU): its numbers are consistent with each other and
its result file has the figures gpu.sh and bench/results rely on. Timing values themselves are not asserted."""
import json

import pytest

from bench import chunk_latency
from bench.schema import validate


def test_derived_chunk_times_add_up():
    off = {"units_ms": 10.0, "step_ms": [20.0, 22.0], "decode_ms": 100.0}
    on = {"step_ms": [40.0, 44.0]}
    rows = chunk_latency.derive("64x64x17", 17, off, on)
    assert [(r["steps"], r["cfg"]) for r in rows] == [(2, False), (4, False), (8, False), (2, True), (4, True),
                                                      (8, True)]
    assert rows[1]["chunk_ms"] == 10 + 4 * 21 + 100  # units + steps x median step + decode
    assert rows[4]["chunk_ms"] == 10 + 4 * 42 + 100
    assert rows[1]["realtime_factor"] == round((16 / 24) / 0.194, 3)  # 16 new frames at 24 fps / 194 ms


def test_chunk_latency_small(tmp_path):
    out = tmp_path / "chunk.json"
    argv = ["--small", "--sizes", "64x64x5", "--preset_runs", "1", "--out", str(out)]
    results = chunk_latency.main(argv)
    preset = results["realtime_preset"]
    assert preset["size"] == "64x64x17" and preset["steps"] == 4 and preset["cfg"] is False
    assert len(preset["step_ms"]) == 4 and len(preset["decode_group_ms"]) == 5  # 5 latent frames, one per group
    assert preset["first_frame_ms"] <= preset["first_new_frame_on_wire_ms"] <= preset["decode_ms"] + 50
    assert results["realtime_factor"] == pytest.approx(  # rounded to 3 decimals
        (16 / 24) / (preset["chunk_ms"] / 1e3), rel=1e-2, abs=5e-4)
    assert preset["server_share_of_frame_budget"] == pytest.approx(preset["server_ms_per_frame"] / (1000 / 24),
                                                                   abs=1e-4)
    off, on = results["runs"]
    assert off["cfg"] is False and on["cfg"] is True and len(off["step_ms"]) == len(on["step_ms"]) == 2
    assert len(results["derived"]) == 6 and results["prompt_encode_ms"] > 0
    assert results["compiled"] is False and results["warmup_s"] > 0

    written = validate(json.loads(out.read_text()))
    assert written["bench"] == "chunk_latency" and "note" not in written  # the final write: not partial
    assert written["command"] == "python -m bench.chunk_latency " + " ".join(argv)
    assert written["device"]["kind"] == "cpu"
    assert written["settings"]["sizes"] == ["64x64x5"] and written["settings"]["preset"] == "tiny"
    figures = {f["name"]: (f["value"], f["unit"]) for f in written["figures"]}
    assert figures["realtime_factor"] == (results["realtime_factor"], "ratio")
    assert figures["realtime_preset.chunk_ms"] == (preset["chunk_ms"], "ms")
    assert figures["realtime_preset.first_new_frame_on_wire_ms"][1] == "ms"
    assert "realtime_preset.peak_gpu_gb" not in figures  # null on CPU: left out
    assert written["details"]["runs"] == results["runs"] and written["details"]["derived"] == results["derived"]
