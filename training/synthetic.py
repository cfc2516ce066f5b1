"""``python -m training.synthetic --out DIR --clips N [--frames --height --width --fps --seed --tilt_deg]``

Renders procedural drone flights with known actions into the seed's dataset format (``training.data.synthetic``):
mp4 clips, Sekai-style poses, metadata.csv (video, prompt, action), metadata.json and action_stats.json.
"""
from __future__ import annotations

import argparse
import sys

from training.data.synthetic import make_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--frames", type=int, default=81, help="frames per clip (4k+1)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tilt_deg", type=float, default=0.0, help="fixed downward camera tilt in degrees")
    args = parser.parse_args(argv)
    try:
        rows = make_dataset(args.out, args.clips, args.frames, args.height, args.width, args.fps, args.seed,
                            args.tilt_deg, progress=True)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} clips to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
