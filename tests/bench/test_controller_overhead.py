"""bench.controller_overhead's result: a ratio figure per injection type and the baseline step. (A run, even at
--small, builds 3072-wide layers: tens of seconds on CPU, so it is run by bench/gpu.sh --small, not here.)"""
import json

from bench import controller_overhead
from bench.schema import validate

RESULTS = {"device": "cpu", "layers": 2, "tokens": 192, "frames": 9, "height": 256, "width": 256,
           "dtype": "torch.float32", "repeats": 3, "compiled": False,
           "controller_overhead": {"cross_attn_frame": 1.0641, "adaln_tmod": 1.056}, "baseline_step_s": 3.67}


def test_the_result_has_a_ratio_per_type_and_the_baseline(tmp_path):
    out = tmp_path / "co.json"
    controller_overhead.write(out, RESULTS, "cpu", "python -m bench.controller_overhead --small", note="partial")
    written = validate(json.loads(out.read_text()))
    assert written["figures"] == [{"name": "cross_attn_frame", "value": 1.0641, "unit": "ratio"},
                                  {"name": "adaln_tmod", "value": 1.056, "unit": "ratio"},
                                  {"name": "baseline_step_s", "value": 3.67, "unit": "s"}]
    assert written["settings"]["layers"] == 2 and written["settings"]["compiled"] is False
    assert written["details"] == {"controller_overhead": RESULTS["controller_overhead"], "baseline_step_s": 3.67}
    assert written["note"] == "partial"
