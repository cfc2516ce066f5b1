"""``python -m training.action_effect --world DIR [DIR ...] [--scenes 4] [--seed 0]``

How strongly each world's actions steer its next frame, read from the DiT (``training.evaluation.action_effect``):
the relative velocity difference between opposite actions, for the chunked (bidirectional) and the stream's
(block-causal) attention. Seconds per world on CPU; prints one JSON object. An early signal while training a
causal world (docs/toyworld.md); ``training.evaluate --generate`` is the score.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.serve_config import ServeConfig, load_serve_config
from models.small_world import load_small_world
from training.evaluation.action_effect import action_effect


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.action_effect", description=__doc__.split("\n\n")[1])
    parser.add_argument("--world", nargs="+", required=True, help="small-world folder(s) (worlds/toy, a run's --out)")
    parser.add_argument("--scenes", type=int, default=4, help="held-out synthetic first images")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    if a.scenes < 1:
        parser.error(f"--scenes must be >= 1, got {a.scenes}")
    results = {}
    for folder in a.world:
        if not Path(folder).is_dir():
            parser.error(f"--world {folder}: not a folder")
        serve = load_serve_config(folder) or ServeConfig()
        try:
            results[folder] = action_effect(load_small_world(folder), serve.height, serve.width, a.scenes,
                                            seed=a.seed)
        except (ValueError, FileNotFoundError) as error:
            parser.error(f"--world {folder}: {error}")
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
