"""bench.stream_latency at its smallest settings (tiny preset, CPU): the cells come most important first, the
numbers of a cell are consistent with each other, and the result file has the figures gpu.sh and combine rely on.
Timing values themselves are not asserted."""
import json

import pytest

from bench import stream_latency
from bench.schema import validate


def test_cells_come_most_important_first_each_mode_back_to_back():
    cells = stream_latency.cell_order([(480, 832), (704, 1280)], [1, 2], [3, 6], [4, 2], ["eager", "compiled"])
    names = [stream_latency.cell_name(c) for c in cells]
    assert len(names) == 2 * 2 * 2 * 2 * 2 and len(set(names)) == len(names)
    assert names[:2] == ["480x832_b1_w3_s4_eager", "480x832_b1_w3_s4_compiled"]
    one_knob = {n.rsplit("_", 1)[0] for n in names[2:10]}  # the cells that differ from the first in one knob
    assert one_knob == {"480x832_b1_w3_s2", "480x832_b1_w6_s4", "480x832_b2_w3_s4", "704x1280_b1_w3_s4"}
    assert names[-1] == "704x1280_b2_w6_s2_compiled"


@pytest.mark.parametrize("argv, message", [(["--sizes", "480x830"], "sizes"), (["--sizes", "480"], "sizes"),
                                           (["--block_frames", "0"], "block_frames"), (["--windows", "a"], "windows"),
                                           (["--modes", "fast"], "modes"), (["--compile_mode", "quick"],
                                                                            "compile_mode")])
def test_bad_options_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        stream_latency.main(["--small", *argv])


def test_stream_latency_small(tmp_path):
    out = tmp_path / "stream.json"
    argv = ["--small", "--sizes", "32x32", "--block_frames", "2", "--windows", "1", "--steps", "1", "--blocks", "2",
            "--chunk_frames", "5", "--chunk_runs", "1", "--out", str(out)]
    results = stream_latency.main(argv)
    chunked = results["chunked"]["eager"]
    assert chunked["size"] == "32x32x5" and chunked["new_frames"] == 4 and chunked["steps"] == 4
    assert chunked["fps"] == pytest.approx(4 / (chunked["chunk_ms"] / 1e3), rel=1e-2)
    assert list(results["cells"]) == ["32x32_b2_w1_s1_eager"]
    cell = results["cells"]["32x32_b2_w1_s1_eager"]
    assert len(cell["blocks"]) == 2 and len(cell["warmup_block_ms"]) == 2  # window 1 fills in 1 block, +1
    assert cell["frames_per_block"] == 8 and cell["cache_frames"] == 2  # sink + window
    assert cell["fps"] == pytest.approx(8 / (cell["block_ms"] / 1e3), rel=1e-2)
    assert cell["fps_vs_chunked"] == pytest.approx(cell["fps"] / chunked["fps"], rel=1e-2)
    for block in cell["blocks"]:
        assert block["denoise_ms"] + block["decode_ms"] + block["commit_ms"] <= block["block_ms"]
        # the first frame leaves after the denoise and before the block ends (its JPEG and hand-off aside)
        assert block["denoise_ms"] < block["key_to_wire_ms"] <= block["block_ms"] + block["jpeg_ms"] + block[
            "handoff_ms"] + 0.1
    # tiny preset: 2 layers, 64 wide, fp32; 32x32 -> 1 token per latent frame; keys and values of sink + window
    assert cell["kv_cache_bytes"] == 2 * 2 * (1 + 1) * 1 * 64 * 4 and cell["decoder_cache_bytes"] > 0
    assert cell["stream_gpu_gb"] is None and cell["peak_gpu_gb"] is None

    written = validate(json.loads(out.read_text()))
    assert written["bench"] == "stream_latency" and "note" not in written  # the final write: not partial
    assert written["command"] == "python -m bench.stream_latency " + " ".join(argv)
    assert written["settings"]["modes"] == ["eager"] and written["settings"]["sizes"] == ["32x32"]
    figures = {f["name"]: (f["value"], f["unit"]) for f in written["figures"]}
    name = "cells.32x32_b2_w1_s1_eager"
    assert figures[f"{name}.fps"] == (cell["fps"], "frames/s")
    assert figures[f"{name}.fps_vs_chunked"] == (cell["fps_vs_chunked"], "ratio")
    assert figures[f"{name}.key_to_wire_ms"] == (cell["key_to_wire_ms"], "ms")
    assert figures[f"{name}.kv_cache_bytes"] == (cell["kv_cache_bytes"], "bytes")
    for key in ("block_ms", "block_p90_ms", "denoise_ms", "decode_ms", "commit_ms"):
        assert figures[f"{name}.{key}"] == (cell[key], "ms")
    assert figures["chunked.eager.fps"] == (chunked["fps"], "frames/s")
    assert figures["chunked.eager.key_to_wire_ms"][1] == "ms"
    assert f"{name}.peak_gpu_gb" not in figures  # null on CPU: left out
    assert written["details"]["cells"] == results["cells"] and written["details"]["skipped"] == []


def test_a_failing_cell_is_reported_and_the_run_goes_on(tmp_path, monkeypatch):
    """One GPU run is precious: a compiled cell that fails (a compiler error, out of memory) is reported in
    details.failed, the later compiled cells are not run, and the eager cells are still measured."""
    chunked = {"size": "32x32x5", "fps": 10.0, "chunk_ms": 400.0, "key_to_wire_ms": 400.0, "peak_gpu_gb": None}
    monkeypatch.setattr(stream_latency, "run_chunked", lambda *args: dict(chunked))

    def run_cell(pipe, cell, *args):
        if cell["mode"] == "compiled":
            raise RuntimeError("inductor says no")
        return {"size": "32x32", "fps": 20.0, "block_ms": 200.0, "block_p90_ms": 210.0, "denoise_ms": 50.0,
                "decode_ms": 140.0, "commit_ms": 10.0, "key_to_wire_ms": 120.0, "kv_cache_bytes": 512,
                "decoder_cache_bytes": 1024, "stream_gpu_gb": None, "peak_gpu_gb": None}
    monkeypatch.setattr(stream_latency, "run_cell", run_cell)
    out = tmp_path / "stream.json"
    results = stream_latency.main(["--small", "--sizes", "32x32", "--block_frames", "1", "--windows", "1",
                                   "--steps", "1,2", "--modes", "eager,compiled", "--out", str(out)])
    assert list(results["cells"]) == ["32x32_b1_w1_s1_eager", "32x32_b1_w1_s2_eager"]
    assert results["failed"] == {"32x32_b1_w1_s1_compiled": "RuntimeError: inductor says no",
                                 "32x32_b1_w1_s2_compiled": "not run: the compiled mode failed in "
                                                            "32x32_b1_w1_s1_compiled"}
    assert results["cells"]["32x32_b1_w1_s1_eager"]["fps_vs_chunked"] == 2.0
    written = validate(json.loads(out.read_text()))
    assert written["details"]["failed"] == results["failed"] and "note" not in written
