"""bench.train_step at its smallest settings (tiny preset, CPU): the loss reaches the controller, the cache skips
the VAE encode, and the result file has its figures. Timing values themselves are not asserted."""
import json

from bench import train_step
from bench.schema import validate


def test_train_step_small(tmp_path):
    out = tmp_path / "train.json"
    results = train_step.main(["--small", "--repeats", "1", "--out", str(out)])
    for variant in ("cached", "uncached"):
        row = results[variant]
        assert row["losses_finite"] and row["controller_grad_norm"] > 0  # the loss reaches the controller
        assert row["step_ms"] >= row["forward_ms"] + row["backward_ms"]
    assert results["cached"]["encode_ms"] < results["uncached"]["encode_ms"]  # the cache skips the VAE encode
    assert results["trainable_params"] > 0

    written = validate(json.loads(out.read_text()))
    assert written["bench"] == "train_step" and written["settings"]["size"] == "64x64x9"
    assert written["settings"]["repeats"] == 1
    figures = {f["name"]: (f["value"], f["unit"]) for f in written["figures"]}
    assert figures["cached.step_ms"] == (results["cached"]["step_ms"], "ms")
    assert figures["cached_speedup"] == (results["cached_speedup"], "ratio")
    assert figures["trainable_params"] == (results["trainable_params"], "count")
