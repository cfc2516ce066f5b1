"""bench.combine: the parts gpu.sh wrote become one result, their figures named <part>.<figure>."""
import json

from bench import combine
from bench.schema import figure, validate, write_result

H100 = {"name": "NVIDIA H100 80GB HBM3", "kind": "cuda", "count": 1}


def test_combine_names_every_part_and_lists_the_missing(tmp_path):
    write_result(tmp_path / "controller_overhead.json", "controller_overhead", {"layers": 30},
                 [figure("add_residual", 1.01, "ratio")], H100)
    write_result(tmp_path / "chunk_latency.json", "chunk_latency", {"preset": "full size, 30 layers"},
                 [figure("realtime_factor", 1.2, "ratio"), figure("realtime_preset.first_new_frame_on_wire_ms",
                                                                  90, "ms")], H100, details={"runs": []})
    write_result(tmp_path / "stream_latency.json", "stream_latency", {"modes": ["eager"]},
                 [figure("cells.480x832_b1_w3_s4_eager.fps", 30.5, "frames/s")], H100)
    assert combine.main([str(tmp_path)]) == 0
    results = validate(json.loads((tmp_path / "results.json").read_text()))
    assert results["bench"] == "combine" and results["device"] == H100
    assert results["command"] == f"python -m bench.combine {tmp_path}"
    assert [(f["name"], f["value"], f["unit"]) for f in results["figures"]] == [
        ("controller_overhead.add_residual", 1.01, "ratio"), ("chunk_latency.realtime_factor", 1.2, "ratio"),
        ("chunk_latency.realtime_preset.first_new_frame_on_wire_ms", 90, "ms"),
        ("stream_latency.cells.480x832_b1_w3_s4_eager.fps", 30.5, "frames/s")]
    assert results["details"]["missing"] == ["train_step", "decode_latency"]
    part = validate(results["details"]["benches"]["chunk_latency"])
    assert part["details"] == {"runs": []} and results["details"]["benches"]["train_step"] is None
