"""bench.decode_latency at its smallest settings (tiny preset, CPU): every section writes its cells, the numbers of
a cell agree with each other, the result is in the schema, and unknown options are refused by name. Timing values
themselves are not asserted."""
import json
import re

import pytest

from bench import decode_latency
from bench.schema import validate


def test_decode_latency_small(tmp_path):
    out = tmp_path / "decode.json"
    results = decode_latency.main(["--small", "--sizes", "32x32", "--options", "small,small+overlap,small+fp8",
                                   "--repeats", "1", "--blocks", "1", "--out", str(out)])
    decode = results["details"]["decode"]["32x32"]
    assert decode["wan_eager_ms"] > 0 and decode["small_eager_ms"] > 0
    assert decode["speedup"] == pytest.approx(decode["wan_eager_ms"] / decode["small_eager_ms"], rel=1e-2)
    assert decode["flops_ratio"] == pytest.approx(decode["small_cost"]["flops_per_latent_frame"] /
                                                  decode["wan_cost"]["flops_per_latent_frame"], rel=1e-3)
    jpeg = results["details"]["jpeg"]["32x32"]
    assert jpeg["cpu_budget_pct"] == pytest.approx(100 * jpeg["cpu_ms"] / (1000 / 24), abs=0.01)
    realtime = results["details"]["realtime"]
    assert sorted(realtime) == ["32x32 small", "32x32 small+fp8", "32x32 small+overlap"]
    for cell in realtime.values():
        # fps is printed to 2 decimals: at a loaded machine's ~0.25 fps that rounding alone is ~2%
        assert cell["fps"] == pytest.approx(4 / (cell["block_ms"] / 1e3), rel=1e-2, abs=0.006)
    fp8 = results["details"]["fp8"]
    assert fp8["linears"] > 0 and 0 < fp8["latent_relative_error"] < 0.5  # e4m3 with per-row scales: percents
    saved = validate(json.loads(out.read_text()))
    names = {f["name"] for f in saved["figures"]}
    assert {"decode.32x32.speedup", "jpeg.32x32.cpu_ms", "realtime.32x32 small.realtime_factor",
            "fp8.latent_relative_error"} <= names
    assert saved["bench"] == "decode_latency" and saved["device"]["kind"] == "cpu" and "note" not in saved


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match=re.escape("options: unknown ['small+jit']")):
        decode_latency.main(["--small", "--options", "small+jit"])
