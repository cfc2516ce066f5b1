"""An animated WebP of a recorded flight for the README: each frame of the server's recording (``flight.mp4`` from
scripts/capture_flight.py) scaled up, with the keys held in its chunk written under it (from ``flight.json``).

``python scripts/flight_animation.py docs/flight --scale 2 --out docs/flight/flight.webp``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw

from models.action_format import ACTION_NAMES

BAR = 18  # pixels of caption under the picture


def held(chunk: dict) -> str:
    flags = chunk["actions"][-1][0]  # the chunk's last step: [flags x 8]
    return " + ".join(name for name, flag in zip(ACTION_NAMES, flags) if flag) or "no key (hover)"


def frames_with_captions(folder: Path, scale: int) -> tuple[list[Image.Image], float]:
    recording = json.loads((folder / "flight.json").read_text())["recording"]
    captions = [held(chunk) for chunk in recording["chunks"] for _ in range(chunk["frames"])]
    reader = imageio_ffmpeg.read_frames(str(folder / "flight.mp4"))
    meta = next(reader)
    width, height = meta["size"]
    images = []
    for index, raw in enumerate(reader):
        picture = Image.fromarray(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
        canvas = Image.new("RGB", (width * scale, height * scale + BAR), (16, 18, 24))
        canvas.paste(picture.resize((width * scale, height * scale), Image.BICUBIC))
        text = f"{index / meta['fps']:4.1f} s  {captions[min(index, len(captions) - 1)]}"
        ImageDraw.Draw(canvas).text((4, height * scale + 3), text, fill=(230, 230, 230))
        images.append(canvas)
    return images, meta["fps"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a capture_flight.py output folder (flight.mp4, flight.json)")
    parser.add_argument("--out", type=Path, required=True, help="the .webp to write")
    parser.add_argument("--scale", type=int, default=2, help="upscale factor of the picture (default: 2)")
    parser.add_argument("--quality", type=int, default=60, help="WebP quality 0..100 (default: 60)")
    args = parser.parse_args(argv)
    images, fps = frames_with_captions(args.folder, args.scale)
    images[0].save(args.out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   quality=args.quality, method=6)
    print(f"wrote {args.out}: {len(images)} frames at {fps:g} fps, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
