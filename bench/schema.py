"""The one results schema of ``bench/``: every bench writes its JSON through ``write_result``; ``validate`` checks one.

A result file (field by field in bench/results/README.md)::

    schema_version  SCHEMA_VERSION
    bench           the bench that wrote it: controller_overhead, chunk_latency, train_step, stream_latency,
                    decode_latency, serving, cluster, real_weights, combine
    date            when it was written, UTC ISO 8601 ("2026-11-26T12:52:32+00:00")
    commit          git HEAD of the checkout that ran (outside a checkout: $BENCH_COMMIT), null if unknown
    dirty           true when tracked files (bench/results/ aside) differed from that commit; null if unknown
    command         the command line, or null
    device          {name, kind: cpu | cuda | unknown, count, threads}
    versions        {python, torch, torchvision, diffsynth, cuda, cudnn, flash_attn}: version strings or null
    settings        the run's parameters (an object)
    figures         [{name, value, unit[, note]}]: every headline number, with its unit (one of UNITS)
    details         optional: the full measurements, nested as the bench made them
    note            optional: e.g. "partial" for a file a bench rewrites as it goes
    provenance      optional: how a file written before this schema was converted to it

Only the standard library is imported here; torch is imported when a device or the versions are described.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

SCHEMA_VERSION = 1
ROOT = Path(__file__).resolve().parents[1]
UNITS = ("ms", "s", "frames/s", "GB", "bytes", "ratio", "%", "count", "dB")
KINDS = ("cpu", "cuda", "unknown")
VERSION_KEYS = ("python", "torch", "torchvision", "diffsynth", "cuda", "cudnn", "flash_attn")
REQUIRED = ("schema_version", "bench", "date", "commit", "dirty", "device", "versions", "settings", "figures")
OPTIONAL = ("command", "details", "note", "provenance")
DEVICE_KEYS = ("name", "kind", "count", "threads")
FIGURE_KEYS = ("name", "value", "unit", "note")
COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


def figure(name: str, value, unit: str, note: str | None = None) -> dict:
    """One headline number: ``{"name", "value", "unit"}`` (and ``"note"`` when given)."""
    out = {"name": name, "value": value, "unit": unit}
    if note:
        out["note"] = note
    return out


def lookup(results: dict, path: str):
    """The value at a dotted path ("realtime_preset.chunk_ms", "flight.first_frame_s.0"), or None if absent."""
    value = results
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def figures_at(results: dict, specs) -> list[dict]:
    """Figures for ``(path, unit)`` or ``(path, unit, name)``: the value at the dotted path in ``results``, named
    by that path unless a name is given. Absent or null values (a GPU memory peak on CPU, a field an older run did
    not record) are left out."""
    return [figure(spec[2] if len(spec) > 2 else spec[0], value, spec[1]) for spec in specs
            if _is_number(value := lookup(results, spec[0]))]


def split(results: dict, setting_keys) -> tuple[dict, dict]:
    """A bench's flat results -> (settings, details): the keys named in ``setting_keys`` are settings, the rest
    (``device`` aside, which the schema describes on its own) are details."""
    settings = {k: results[k] for k in setting_keys if k in results}
    details = {k: v for k, v in results.items() if k not in settings and k != "device"}
    return settings, details


def describe_device(device) -> dict:
    """``{"name", "kind", "count", "threads"}`` for a torch.device or "cpu" / "cuda" / "cuda:1"."""
    import torch
    device = torch.device(device)
    threads = torch.get_num_threads()
    if device.type == "cuda":
        return {"name": torch.cuda.get_device_name(device), "kind": "cuda", "count": torch.cuda.device_count(),
                "threads": threads}
    if device.type == "cpu":
        return {"name": cpu_name(), "kind": "cpu", "count": os.cpu_count(), "threads": threads}
    return {"name": str(device), "kind": "unknown", "count": None, "threads": threads}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=None)
def versions() -> dict:
    """Python, torch, torchvision, diffsynth, CUDA and cuDNN (as torch was built with them), flash-attn; null when
    not installed (CUDA and cuDNN: a CPU build of torch)."""
    import torch
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": _installed("torchvision"),
            "diffsynth": _installed("diffsynth"), "cuda": torch.version.cuda,
            "cudnn": None if cudnn is None else str(cudnn), "flash_attn": _installed("flash-attn")}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@lru_cache(maxsize=None)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding bench/, once per process. Outside a git checkout (a copied tree on
    a GPU machine): ``$BENCH_COMMIT`` if set (dirty unknown), else (None, None). Dirty counts tracked files only,
    bench/results/ aside, so a bench writing its own output there does not mark its run dirty."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        given = os.environ.get("BENCH_COMMIT", "").strip().lower()
        return (given or None), None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    return commit.strip(), None if status is None else bool(status.strip())


def build_result(bench: str, settings: dict, figures: list[dict], device, details: dict | None = None,
                 command: str | None = None, note: str | None = None) -> dict:
    """A validated result of this run: ``device`` is a torch.device or "cpu"/"cuda" (described here) or an
    already described ``{"name", "kind", "count", "threads"}``."""
    commit, dirty = git_state()
    result = {"schema_version": SCHEMA_VERSION, "bench": bench,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit, "dirty": dirty, "command": command,
              "device": dict(device) if isinstance(device, dict) else describe_device(device),
              "versions": versions(), "settings": settings, "figures": figures}
    if details is not None:
        result["details"] = details
    if note:
        result["note"] = note
    return validate(result)


def write_result(path: str | os.PathLike | None, bench: str, settings: dict, figures: list[dict], device,
                 details: dict | None = None, command: str | None = None, note: str | None = None) -> dict:
    """Build (see ``build_result``) and, when ``path`` is given, write the result as JSON; returns it. The file is
    replaced whole (written next to it, then renamed), so a run killed mid-write leaves the previous one."""
    result = build_result(bench, settings, figures, device, details=details, command=command, note=note)
    if path:
        dump(path, result)
        print(f"wrote {path}" + (f" ({note})" if note else ""), flush=True)
    return result


def dump(path: str | os.PathLike, result: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(partial, path)


def command_line(module: str, argv) -> str:
    """How this run was started: ``python -m bench.<name> ARGS`` (``argv`` None: this process's arguments)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def load_result(path: str | os.PathLike) -> dict:
    """Read and validate a result file; a bad one raises ValueError naming the file and the field."""
    with open(path) as f:
        data = json.load(f)
    try:
        return validate(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(field: str, message: str):
    raise ValueError(f"{field}: {message}")


def _check_keys(data: dict, field: str, required, allowed) -> None:
    for key in required:
        if key not in data:
            _fail(f"{field}.{key}" if field else key, "missing")
    for key in data:
        if key not in allowed:
            _fail(f"{field}.{key}" if field else key, f"unknown field (expected one of {', '.join(allowed)})")


def validate(data) -> dict:
    """Return ``data`` if it is a result of this schema, else raise ValueError naming the first bad field."""
    if not isinstance(data, dict):
        _fail("result", f"expected a JSON object, got {type(data).__name__}")
    _check_keys(data, "", REQUIRED, REQUIRED + OPTIONAL)
    if data["schema_version"] != SCHEMA_VERSION:
        _fail("schema_version", f"expected {SCHEMA_VERSION}, got {data['schema_version']!r}")
    if not isinstance(data["bench"], str) or not data["bench"]:
        _fail("bench", "expected a bench name")
    try:
        date = datetime.datetime.fromisoformat(data["date"])
    except (TypeError, ValueError):
        _fail("date", f"expected an ISO 8601 date and time, got {data['date']!r}")
    if date.utcoffset() != datetime.timedelta(0):
        _fail("date", f"expected UTC (+00:00), got {data['date']!r}")
    if data["commit"] is not None and not (isinstance(data["commit"], str) and COMMIT.match(data["commit"])):
        _fail("commit", f"expected a git commit (hex) or null, got {data['commit']!r}")
    if data["dirty"] not in (True, False, None):
        _fail("dirty", f"expected true, false or null, got {data['dirty']!r}")
    for key in ("command", "note"):
        if data.get(key) is not None and not isinstance(data[key], str):
            _fail(key, "expected a string or null")
    _validate_device(data["device"])
    versions = data["versions"]
    if not isinstance(versions, dict):
        _fail("versions", "expected an object")
    _check_keys(versions, "versions", VERSION_KEYS, VERSION_KEYS)
    for key, value in versions.items():
        if value is not None and not isinstance(value, str):
            _fail(f"versions.{key}", f"expected a version string or null, got {value!r}")
    for key in ("settings", "details"):
        if key in data and not isinstance(data[key], dict):
            _fail(key, "expected an object")
    if "provenance" in data and not isinstance(data["provenance"], (dict, str)):
        _fail("provenance", "expected an object or a string")
    _validate_figures(data["figures"])
    return data


def _validate_device(device) -> None:
    if not isinstance(device, dict):
        _fail("device", "expected an object")
    _check_keys(device, "device", ("name", "kind", "count"), DEVICE_KEYS)
    if not isinstance(device["name"], str) or not device["name"]:
        _fail("device.name", "expected a device name")
    if device["kind"] not in KINDS:
        _fail("device.kind", f"expected one of {', '.join(KINDS)}, got {device['kind']!r}")
    for key in ("count", "threads"):
        value = device.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            _fail(f"device.{key}", f"expected a positive integer or null, got {value!r}")


def _validate_figures(figures) -> None:
    if not isinstance(figures, list):
        _fail("figures", "expected a list")
    names = set()
    for i, item in enumerate(figures):
        field = f"figures[{i}]"
        if not isinstance(item, dict):
            _fail(field, "expected an object {name, value, unit}")
        _check_keys(item, field, ("name", "value", "unit"), FIGURE_KEYS)
        if not isinstance(item["name"], str) or not item["name"]:
            _fail(f"{field}.name", "expected a name")
        if item["name"] in names:
            _fail(f"{field}.name", f"{item['name']!r} appears twice")
        names.add(item["name"])
        if not _is_number(item["value"]):
            _fail(f"{field}.value", f"{item['name']}: expected a finite number, got {item['value']!r}")
        if item["unit"] not in UNITS:
            _fail(f"{field}.unit", f"{item['name']}: expected one of {', '.join(UNITS)}, got {item['unit']!r}")
        if "note" in item and not isinstance(item["note"], str):
            _fail(f"{field}.note", "expected a string")
