"""``python -m server.generate --prompt "..." --actions "forward:20" --out video.mp4 [--image first.png]``

One offline generation with the same world loading, generator and mp4 writer as the server. ``--actions`` is a
JSON file of raw ``(T, 2, 8)`` actions or a text timeline (``server.inputs.parse_action_spec``, ``ACTION_GRAMMAR``);
the video has 4T+1 frames. A causal world makes it through one stream, T / block_frames blocks, of any length (T must
be a multiple of block_frames). World options are ``python -m server``'s, described from the same source
(``server.settings``). Progress is one updating bar on stderr; the last line says how long generating took and how
long the video is.
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
from server.generation.world_args import check_world_args
from server.generation.worlds import load_world
from server.inputs import parse_action_spec
from server.media.images import decode_image_bytes, load_sample
from server.media.recording import write_mp4
from server.settings import Settings, add_settings_arguments

WORLD_OPTIONS = ("world", "model_dir", "artifacts", "device", "dtype", "world_seed", "threads", "height", "width",
                 "fps", "steps", "cfg_scale", "action_guidance", "action_guidance_rescale", "generation",
                 "block_frames", "window", "sink", "decoder", "decode_device", "fp8", "web_dir")
ACTION_GRAMMAR = """actions as text: comma-separated segments NAMES:STEPS, one step = one latent frame = 4 video frames
  NAMES    one action, or several joined with + (held together): forward, back, left, right,
           yaw_left, yaw_right, pitch_up, pitch_down; or hover (no action)
  =F       after a name: F (0..1) of a held key's magnitude (default 1 = the key held)
  examples
    forward:20                         20 steps forward: 81 frames
    forward+yaw_left:10,hover:5        a left turn while moving forward, then 5 steps of hovering
    forward=0.5:8                      forward at half speed
actions as a file: JSON of raw actions (T, 2, 8): per step [flags 0/1 x 8, magnitudes in raw units x 8]
  (raw units: GET /api/config world.full_scale is the magnitude of a held key)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.generate", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python -m server.generate --prompt TEXT --actions SPEC|FILE --out VIDEO.mp4 [--option VALUE ...]",
        description="One offline video from a first frame, a prompt and a timeline of actions, with the server's "
                    "world\n(the toy world unless told otherwise).", epilog=ACTION_GRAMMAR)
    clip = parser.add_argument_group("the clip")
    clip.add_argument("--image", default=None, metavar="PATH",
                      help="first frame (PNG/JPEG/WebP); default: the world's bundled sample")
    clip.add_argument("--prompt", required=True, metavar="TEXT", help="text prompt")
    clip.add_argument("--actions", required=True, metavar="SPEC|FILE",
                      help='a text timeline such as "forward:20" (below) or a JSON file of raw (T, 2, 8) actions')
    clip.add_argument("--out", required=True, metavar="VIDEO.mp4", help="output .mp4 (H.264)")
    clip.add_argument("--seed", type=int, default=0, metavar="INT", help="noise seed (default: 0)")
    clip.add_argument("--negative_prompt", default="", metavar="TEXT",
                      help="negative prompt (used when --cfg_scale > 1)")
    add_settings_arguments(parser, WORLD_OPTIONS, titles={"where and what to serve": "the world (as python -m server)",
                                                          "recordings, UI": "bundled samples"})
    return parser


def load_actions(value: str, full_scale):


    if os.path.isfile(value):
        with open(value) as f:
            return parse_actions(json.load(f), name=f"actions ({value})")[0].numpy().astype(np.float64)
    return parse_action_spec(value, full_scale)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    world_args = [f"--{k}={option_text(getattr(args, k))}" for k in WORLD_OPTIONS if getattr(args, k) is not None]
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
    with progress_bar() as progress:
        frames = PipelineGenerator(world).generate(request, progress=progress)
    generation_s = time.perf_counter() - started
    write_mp4(args.out, frames, world.fps)
    print(f"wrote {args.out}: {len(frames)} frames, {world.width}x{world.height} at {world.fps} fps = "
          f"{len(frames) / world.fps:.1f} s of video; generating took {generation_s:.1f} s "
          f"({world.steps} steps, {world.device}; weights: {world.weights})")
    return 0


def option_text(value) -> str:
    """A parsed option back as the command line's text (booleans as 1/0)."""
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


class progress_bar:
    """``progress(step, total)`` drawn as one tqdm bar on stderr (denoising steps over all chunks or blocks)."""

    def __enter__(self):
        self.bar = None
        return self

    def __call__(self, step: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc="denoising", unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(step - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    sys.exit(main())
