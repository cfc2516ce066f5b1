"""Combine the JSON of bench/gpu.sh's runs into OUT_DIR/results.json: ``device``, ``realtime_factor`` (the
real-time preset), ``controller_overhead`` (injection type -> step-time ratio) and each bench's full results.

    python bench/combine.py OUT_DIR
"""
from __future__ import annotations

import json
import os
import sys


def load(folder: str, name: str) -> dict | None:
    path = os.path.join(folder, f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def combine(folder: str) -> dict:
    parts = {name: load(folder, name) for name in ("controller_overhead", "chunk_latency", "train_step")}
    found = [p for p in parts.values() if p]
    latency = parts["chunk_latency"] or {}
    preset = latency.get("realtime_preset", {})
    return {
        "device": found[0]["device"] if found else None,
        "realtime_factor": latency.get("realtime_factor"),
        "realtime_preset": preset.get("preset"),
        "first_new_frame_on_wire_ms": preset.get("first_new_frame_on_wire_ms"),
        "server_share_of_frame_budget": preset.get("server_share_of_frame_budget"),
        "controller_overhead": (parts["controller_overhead"] or {}).get("controller_overhead"),
        "missing": [name for name, part in parts.items() if part is None],
        "benches": parts,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python bench/combine.py OUT_DIR")
    results = combine(argv[0])
    path = os.path.join(argv[0], "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: results[k] for k in ("device", "realtime_factor", "controller_overhead", "missing")}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
