"""``python -m training.rollout --world worlds/toy --chunks 16 --scenes 4 --out rollout.json``

How far an autoregressive flight drifts from its first scene (``training.evaluation.rollout``).
"""
from __future__ import annotations

import argparse
import json
import sys

from models.serve_config import load_serve_config
from models.small_world import load_small_world
from training.evaluation.rollout import measure


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.rollout", description=__doc__.split("\n\n")[1])
    p.add_argument("--world", required=True, help="a small world's folder (worlds/toy or a training.toyworld --out)")
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--scenes", type=int, default=4, help="held-out rendered first frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    if a.chunks < 1 or a.scenes < 1:
        p.error("--chunks and --scenes must be at least 1")
    try:
        serve = load_serve_config(a.world)
    except ValueError as error:
        p.error(f"--world: {error}")
    if serve is None:
        p.error(f"--world: no serve.json in {a.world}")
    result = measure(load_small_world(a.world), serve, a.chunks, a.scenes, a.seed)
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
