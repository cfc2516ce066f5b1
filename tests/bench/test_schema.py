"""bench.schema: every committed result validates; the writer adds date, commit, device and versions; a bad result
is refused with the field named."""
import copy
import datetime
import json
import subprocess
from pathlib import Path

import pytest

from bench import schema

RESULTS = sorted((Path(__file__).resolve().parents[2] / "bench" / "results").glob("*.json"))


def test_the_committed_results_are_found():
    assert len(RESULTS) >= 9


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_every_committed_result_validates(path):
    result = schema.load_result(path)
    assert result["figures"] and result["commit"]
    for part in result.get("details", {}).get("benches", {}).values():  # combine: every part is a result too
        if part is not None:
            schema.validate(part)


def written(tmp_path, **kwargs):
    path = tmp_path / "out" / "result.json"
    returned = schema.write_result(path, "unit_test", {"size": "64x64x9"},
                                   [schema.figure("chunk_ms", 12.5, "ms"), schema.figure("speedup", 2, "ratio")],
                                   "cpu", details={"runs": [1, 2]}, command="python -m bench.x", **kwargs)
    data = json.loads(path.read_text())
    assert data == returned and not list(path.parent.glob("*.tmp"))
    return data


def test_the_writer_adds_date_commit_device_and_versions(tmp_path):
    data = written(tmp_path)
    assert data["schema_version"] == schema.SCHEMA_VERSION and data["bench"] == "unit_test"
    head = subprocess.run(["git", "-C", str(schema.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (a copied tree: null, see the next test)
        assert data["commit"] == head.stdout.strip() and data["dirty"] in (True, False)
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(data["date"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)
    assert data["device"]["kind"] == "cpu" and data["device"]["count"] >= 1 and data["device"]["threads"] >= 1
    assert set(data["versions"]) == set(schema.VERSION_KEYS) and data["versions"]["torch"]
    assert data["settings"] == {"size": "64x64x9"} and data["details"] == {"runs": [1, 2]}
    assert [f["unit"] for f in data["figures"]] == ["ms", "ratio"] and "note" not in data
    assert written(tmp_path, note="partial: one size")["note"] == "partial: one size"


def test_outside_a_checkout_the_commit_comes_from_bench_commit(monkeypatch):
    monkeypatch.setattr(schema, "_git", lambda *args: None)
    schema.git_state.cache_clear()
    try:
        monkeypatch.setenv("BENCH_COMMIT", "ABC1234")
        assert schema.git_state() == ("abc1234", None)
        schema.git_state.cache_clear()
        monkeypatch.delenv("BENCH_COMMIT")
        assert schema.git_state() == (None, None)
    finally:
        schema.git_state.cache_clear()


def test_figures_at_follows_paths_and_leaves_out_what_is_missing():
    results = {"a": {"b": 1.5, "none": None}, "list": [3, 4], "flag": True}
    assert schema.figures_at(results, [("a.b", "ms"), ("list.1", "count", "second"), ("a.none", "GB"),
                                       ("absent.x", "s"), ("flag", "count")]) == [
        {"name": "a.b", "value": 1.5, "unit": "ms"}, {"name": "second", "value": 4, "unit": "count"}]


def test_split_moves_settings_out_and_drops_the_device_string():
    settings, details = schema.split({"device": "cpu", "layers": 2, "ratio": 1.1}, ("layers", "dtype"))
    assert settings == {"layers": 2} and details == {"ratio": 1.1}


VALID = {"schema_version": schema.SCHEMA_VERSION, "bench": "chunk_latency", "date": "2026-11-26T12:52:32+00:00",
         "commit": "01e37269c6cf024c9253a54feeafe585ca1d67ac", "dirty": False, "command": None,
         "device": {"name": "NVIDIA H200", "kind": "cuda", "count": 1},
         "versions": dict.fromkeys(schema.VERSION_KEYS, None), "settings": {},
         "figures": [schema.figure("realtime_factor", 1.056, "ratio"), schema.figure("chunk_ms", 631.0, "ms"),
                     schema.figure("peak_gpu_gb", 15.1, "GB")]}


def test_the_example_is_valid():
    assert schema.validate(copy.deepcopy(VALID)) == VALID


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("date"), "date: missing"),
    (lambda d: d.update(extra=1), "extra: unknown field"),
    (lambda d: d.update(schema_version=0), "schema_version"),
    (lambda d: d.update(date="2026-11-26T12:00:00+01:00"), "date: expected UTC"),
    (lambda d: d.update(date="yesterday"), "date"),
    (lambda d: d.update(commit="not-a-sha"), "commit"),
    (lambda d: d.update(dirty="no"), "dirty"),
    (lambda d: d["device"].update(kind="tpu"), "device.kind"),
    (lambda d: d["device"].update(count=0), "device.count"),
    (lambda d: d["versions"].pop("torch"), "versions.torch: missing"),
    (lambda d: d["versions"].update(torch=2.11), "versions.torch"),
    (lambda d: d.update(settings=[]), "settings"),
    (lambda d: d["figures"][1].update(unit="seconds"), r"figures\[1\].unit"),
    (lambda d: d["figures"][0].update(value="fast"), r"figures\[0\].value"),
    (lambda d: d["figures"][0].update(value=float("nan")), r"figures\[0\].value"),
    (lambda d: d["figures"][0].update(value=True), r"figures\[0\].value"),
    (lambda d: d["figures"][2].update(name=d["figures"][0]["name"]), r"figures\[2\].name: .* appears twice"),
    (lambda d: d["figures"][0].pop("unit"), r"figures\[0\].unit: missing"),
])
def test_a_bad_result_is_refused_naming_the_field(change, field):
    data = copy.deepcopy(VALID)
    change(data)
    with pytest.raises(ValueError, match=field):
        schema.validate(data)


def test_load_result_names_the_file(tmp_path):
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"device": "NVIDIA H200", "realtime_factor": {"eager": 1.0}}))
    with pytest.raises(ValueError, match=r"old.json: schema_version: missing"):
        schema.load_result(bad)
