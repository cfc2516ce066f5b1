"""Combine the results of bench/gpu.sh's runs into OUT_DIR/results.json, one result (bench.schema) of its own:
every part's figures, named ``<part>.<figure>`` (``chunk_latency.realtime_factor``,
``stream_latency.cells.480x832_b1_w3_s4_eager.fps``, ...), and each part's whole result in ``details.benches``.

    python -m bench.combine OUT_DIR
"""
from __future__ import annotations

import argparse
import os
import sys

from bench.schema import command_line, figure, load_result, write_result

PARTS = ("controller_overhead", "chunk_latency", "stream_latency", "train_step", "decode_latency")


def load(folder: str, name: str) -> dict | None:
    path = os.path.join(folder, f"{name}.json")
    return load_result(path) if os.path.isfile(path) else None


def combined_figures(parts: dict) -> list[dict]:
    """Every part's figures under ``<part>.<name>``, parts in order."""
    return [figure(f"{name}.{item['name']}", item["value"], item["unit"], item.get("note"))
            for name, part in parts.items() if part for item in part["figures"]]


def combine(folder: str, path: str | None = None, command: str | None = None) -> dict:
    """The combined result of the parts found in ``folder`` (written to ``path`` when given). Its device is the
    parts' (they ran on one machine); a missing part is listed in ``details.missing``."""
    parts = {name: load(folder, name) for name in PARTS}
    found = [part for part in parts.values() if part]
    device = found[0]["device"] if found else {"name": "unknown (no part found)", "kind": "unknown", "count": None}
    return write_result(path, "combine", {"parts": list(PARTS)}, combined_figures(parts), device,
                        details={"missing": [name for name, part in parts.items() if part is None],
                                 "benches": parts}, command=command)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.combine", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="the folder bench/gpu.sh wrote its parts into; results.json goes there")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.out_dir):
        parser.error(f"out_dir: {args.out_dir!r} is not a folder")
    results = combine(args.out_dir, os.path.join(args.out_dir, "results.json"),
                      command_line("bench.combine", [args.out_dir]))
    print(f"{results['device']['name']}: missing {results['details']['missing']}")
    for item in results["figures"]:
        print(f"  {item['name']:60s} {item['value']:>12g} {item['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
