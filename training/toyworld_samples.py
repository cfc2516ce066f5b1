"""The demo's bundled first frames: ``python -m training.toyworld_samples --world DIR --out web/samples``.

Writes ``synthetic-1.png`` .. ``synthetic-3.png`` at the world's resolution (its ``serve.json``): held-out scenes of
``training.synthetic`` (seeds far from the training clips) seen from their start pose, and prints their prompts.
Committed as images, so the server never renders at start; ``training.toyworld`` names one of them, with its prompt,
in the world's ``serve.json``.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

SAMPLE_SEED_BASE = 7_000_100  # web/samples/synthetic-{index + 1}.png
SAMPLES = 3


def sample_scene(index: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """(first frame uint8, prompt) of bundled sample ``synthetic-{index + 1}``."""
    from training.eval_suite import held_out_view
    return held_out_view(SAMPLE_SEED_BASE + index, height, width)


def main(argv=None) -> int:
    from PIL import Image
    p = argparse.ArgumentParser(prog="python -m training.toyworld_samples", description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True, help="world folder (its serve.json gives the resolution)")
    p.add_argument("--out", required=True, help="output folder, e.g. web/samples")
    a = p.parse_args(argv)
    from training.eval_suite import world_hints
    hints = world_hints(a.world)
    if not hints:
        p.error(f"--world: {os.path.join(a.world, 'serve.json')} not found")
    os.makedirs(a.out, exist_ok=True)
    for index in range(SAMPLES):
        first, prompt = sample_scene(index, hints["height"], hints["width"])
        Image.fromarray(first).save(os.path.join(a.out, f"synthetic-{index + 1}.png"))
        print(f"synthetic-{index + 1}.png: {prompt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
