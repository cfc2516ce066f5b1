"""The benches at their smallest settings (tiny preset, CPU): their numbers are consistent with each other and
their JSON has the fields bench/results and gpu.sh rely on. Timing values themselves are not asserted."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is scripts, not an installed package
from bench import chunk_latency, combine, train_step  # noqa: E402
from bench.common import parse_size  # noqa: E402


def test_parse_size_names_the_field():
    assert parse_size("480x832x33") == (480, 832, 33)
    for bad in ("480x832", "480x830x33", "480x832x32"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


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
    results = chunk_latency.main(["--small", "--sizes", "64x64x5", "--preset_runs", "1", "--out", str(out)])
    assert json.loads(out.read_text())["realtime_factor"] == results["realtime_factor"]
    preset = results["realtime_preset"]
    assert preset["size"] == "64x64x17" and preset["steps"] == 4 and preset["cfg"] is False
    assert len(preset["step_ms"]) == 4 and len(preset["decode_group_ms"]) == 5  # 5 latent frames, one per group
    assert preset["first_frame_ms"] <= preset["first_new_frame_on_wire_ms"] <= preset["decode_ms"] + 50
    assert results["realtime_factor"] == pytest.approx((16 / 24) / (preset["chunk_ms"] / 1e3), rel=1e-2)
    assert preset["server_share_of_frame_budget"] == pytest.approx(preset["server_ms_per_frame"] / (1000 / 24),
                                                                   abs=1e-4)
    off, on = results["runs"]
    assert off["cfg"] is False and on["cfg"] is True and len(off["step_ms"]) == len(on["step_ms"]) == 2
    assert len(results["derived"]) == 6 and results["prompt_encode_ms"] > 0
    assert results["compiled"] is False and results["warmup_s"] > 0


def test_train_step_small(tmp_path):
    results = train_step.main(["--small", "--repeats", "1", "--out", str(tmp_path / "train.json")])
    for variant in ("cached", "uncached"):
        row = results[variant]
        assert row["losses_finite"] and row["controller_grad_norm"] > 0  # the loss reaches the controller
        assert row["step_ms"] >= row["forward_ms"] + row["backward_ms"]
    assert results["cached"]["encode_ms"] < results["uncached"]["encode_ms"]  # the cache skips the VAE encode
    assert results["trainable_params"] > 0


def test_combine_writes_the_required_fields(tmp_path):
    (tmp_path / "controller_overhead.json").write_text(json.dumps(
        {"device": "NVIDIA H100", "controller_overhead": {"add_residual": 1.01}}))
    (tmp_path / "chunk_latency.json").write_text(json.dumps(
        {"device": "NVIDIA H100", "realtime_factor": 1.2, "realtime_preset": {"first_new_frame_on_wire_ms": 90}}))
    assert combine.main([str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["device"] == "NVIDIA H100" and results["realtime_factor"] == 1.2
    assert results["controller_overhead"] == {"add_residual": 1.01}
    assert results["first_new_frame_on_wire_ms"] == 90 and results["missing"] == ["train_step"]
