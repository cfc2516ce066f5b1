"""``python -m training.toyworld_samples --world DIR --out web/samples``

Writes the demo's bundled first frames ``synthetic-1.png`` .. ``synthetic-3.png`` at the world's resolution
(``training.smallworld.samples``) and prints their prompts.
"""
from __future__ import annotations

import argparse
import os

from PIL import Image

from models.serve_config import load_serve_config
from training.smallworld.samples import SAMPLES, sample_scene


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.toyworld_samples", description=__doc__.split("\n\n")[1])
    p.add_argument("--world", required=True, help="world folder (its serve.json gives the resolution)")
    p.add_argument("--out", required=True, help="output folder, e.g. web/samples")
    a = p.parse_args(argv)
    try:
        serve = load_serve_config(a.world)
    except ValueError as error:
        p.error(f"--world: {error}")
    if serve is None:
        p.error(f"--world: {os.path.join(a.world, 'serve.json')} not found")
    os.makedirs(a.out, exist_ok=True)
    for index in range(SAMPLES):
        first, prompt = sample_scene(index, serve.height, serve.width)
        Image.fromarray(first).save(os.path.join(a.out, f"synthetic-{index + 1}.png"))
        print(f"synthetic-{index + 1}.png: {prompt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
