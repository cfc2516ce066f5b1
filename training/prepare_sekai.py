"""``python -m training.prepare_sekai --videos DIR --poses DIR --captions CSV --out DIR [--frames 81 --fps 24
--stride N --heading_frame --raw_captions --height H --width W]``

Sekai camera trajectories -> the seed's training CSV (``training.data.sekai``): clips, metadata.csv/json, a report of
every accepted and rejected video and window, action statistics.
"""
from __future__ import annotations

import argparse
import sys

from training.data.sekai import Settings, convert_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.prepare_sekai", description=__doc__.split("\n\n")[1])
    parser.add_argument("--videos", required=True, help="directory of {ytid}_{start}_{end}.mp4 videos")
    parser.add_argument("--poses", required=True, help="directory of {stem}.npz camera files")
    parser.add_argument("--captions", required=True, help="CSV with columns videoFile, caption")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--frames", type=int, default=81, help="frames per training clip (4k+1)")
    parser.add_argument("--fps", type=float, default=24.0, help="training clip frame rate")
    parser.add_argument("--stride", type=int, default=None, help="source frames between clip starts "
                                                                 "(default: one clip span, no overlap)")
    parser.add_argument("--heading_frame", action="store_true", help="measure motion in the level heading frame "
                                                                     "(tilted drone cameras)")
    parser.add_argument("--raw_captions", action="store_true", help="keep camera-motion phrases in prompts")
    parser.add_argument("--height", type=int, default=None, help="output height (with --width; default: source)")
    parser.add_argument("--width", type=int, default=None)
    args = parser.parse_args(argv)
    settings = Settings(args.frames, args.fps, args.stride, args.heading_frame, args.raw_captions, args.height,
                        args.width)
    try:
        report = convert_dataset(args.videos, args.poses, args.captions, args.out, settings, progress=True)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    totals = report["totals"]
    print(f"{totals['windows_ok']} clips from {totals['videos_ok']}/{totals['videos']} videos written to {args.out}; "
          f"{totals['videos_rejected']} videos and {totals['windows_rejected']} windows rejected (see summary.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
