"""``python -m server.generate --image first.png --prompt "..." --actions FILE|"forward:20" --out video.mp4``

One offline generation with the same world loading, generator and mp4 writer as the server. ``--actions`` is a
JSON file of raw ``(T, 2, 8)`` actions or a text timeline (``server.inputs.parse_action_spec``: ``forward:20``,
``forward+yaw_left:10,hover:5``, ``forward=0.5:8``); the video has 4T+1 frames. A causal world makes it through one
stream, T / block_frames blocks, of any length (T must be a multiple of block_frames). World options as for
``python -m server`` (``--world``, ``--model_dir``, ``--artifacts``, ``--device``, ``--height``, ...).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from models.action_format import num_frames_for_actions, parse_actions
from models.media import fit_image
from server.generation.generators import GenRequest, PipelineGenerator, check_video_steps
from server.generation.worlds import check_world_args, load_world
from server.inputs import parse_action_spec
from server.media.images import decode_image_bytes, load_sample
from server.media.recording import write_mp4
from server.settings import Settings

WORLD_OPTIONS = ("world", "model_dir", "artifacts", "device", "dtype", "world_seed", "threads", "height", "width",
                 "fps", "steps", "cfg_scale", "action_guidance", "action_guidance_rescale", "generation",
                 "block_frames", "window", "sink", "decoder", "decode_device", "fp8", "web_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=None, help="first frame (PNG/JPEG/WebP); default: a bundled sample")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--actions", required=True, help='JSON file of (T, 2, 8) raw actions, or e.g. "forward:20"')
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negative_prompt", default="")
    for name in WORLD_OPTIONS:
        parser.add_argument(f"--{name}", default=None)
    return parser


def load_actions(value: str, full_scale):


    if os.path.isfile(value):
        with open(value) as f:
            return parse_actions(json.load(f), name=f"actions ({value})")[0].numpy().astype(np.float64)
    return parse_action_spec(value, full_scale)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    world_args = [f"--{k}={getattr(args, k)}" for k in WORLD_OPTIONS if getattr(args, k) is not None]
    settings = Settings.from_args(world_args + ["--gradio=0"], error=parser.error)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")

    try:
        check_world_args(settings)
        world = load_world(settings)
        actions = load_actions(args.actions, world.full_scale)  # (T, 2, 8)
        num_frames = num_frames_for_actions(len(actions))
        check_video_steps(world, len(actions), "actions")
        if world.max_frames is not None and num_frames > world.max_frames:
            raise ValueError(f"actions: {len(actions)} steps make {num_frames} frames, more than {world.max_frames}")
        if args.image:
            with open(args.image, "rb") as f:
                image = decode_image_bytes(f.read(), settings.max_upload_bytes, settings.max_image_pixels, "--image")
        else:
            image = load_sample(settings.web_dir, world.sample)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    request = GenRequest(prompt=args.prompt, image=fit_image(image, world.width, world.height), actions=actions,
                         num_frames=num_frames, steps=world.steps, seed=args.seed, cfg_scale=world.cfg_scale,
                         negative_prompt=args.negative_prompt)
    started = time.perf_counter()
    frames = PipelineGenerator(world).generate(
        request, progress=lambda i, n: print(f"step {i}/{n}", file=sys.stderr, flush=True))
    write_mp4(args.out, frames, world.fps)
    print(f"wrote {args.out}: {len(frames)} frames {world.width}x{world.height} at {world.fps} fps "
          f"({time.perf_counter() - started:.1f} s, weights: {world.weights})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
