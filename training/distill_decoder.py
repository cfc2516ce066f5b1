"""``python -m training.distill_decoder (--world DIR | --model_dir WAN_DIR --data CSV|DIR | --preset tiny) --out DIR``

Distils a world's Wan VAE decoder into a small decoder of our own (``models.frames.small_decoder``): the teacher's
frozen encoder makes latents of real clips, its decoder the target frames, and the student learns them with pixel,
frame-difference and (optionally) patch-GAN losses, keeping an EMA of its weights (``training.distill``). Writes the
decoder folder OUT (small_decoder.json + small_decoder.safetensors + side_by_side.png); a world serves it when OUT is
<world>/small_decoder and ``--decoder small`` (or serve.json's "decoder") asks for it. A rerun with the same --work
resumes exactly. See docs/toyworld.md (the toy world's) and docs/performance.md (the frame path).
"""
from __future__ import annotations

import argparse
import json
import logging
import math

import torch

from models.action_format import FRAMES_PER_LATENT
from models.frames.small_decoder import PRESETS
from training.distill.run import DistillRun, build_teacher, student_config


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,32,16, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.distill_decoder", description=__doc__.split("\n\n")[1])
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--world", help="a small-world folder (e.g. worlds/toy): its VAE is the teacher")
    teacher.add_argument("--model_dir", help="a Wan2.2-TI2V-5B folder: its VAE is the teacher (needs --data)")
    teacher.add_argument("--preset", choices=["tiny"], help="the tiny random preset's VAE (tests, smoke runs)")
    p.add_argument("--data", help="a dataset CSV (video,prompt,action) or a folder of mp4s (default for --world and "
                                  "--preset: the synthetic flights)")
    p.add_argument("--out", required=True, help="the decoder folder to write (e.g. worlds/toy/small_decoder)")
    p.add_argument("--work", help="checkpoints and the data cache (default outputs/distill_decoder/<out>)")
    p.add_argument("--size", choices=sorted(PRESETS), help="student preset (default: toy for a world, full for "
                                                           "--model_dir)")
    p.add_argument("--widths", type=int_list, help="student channels per level, e.g. 64,48,24,16")
    p.add_argument("--blocks", type=int_list, help="student memory blocks per level, e.g. 2,1,1,1")
    p.add_argument("--patch", type=int, help="student head pixel shuffle (2 ** (levels - 1) * patch must be 16)")
    p.add_argument("--height", type=int, help="clip height (default: the world's serve.json; 480 --model_dir)")
    p.add_argument("--width", type=int, help="clip width (default: the world's serve.json; 832 --model_dir)")
    p.add_argument("--frames", type=int, default=17, help="frames per training clip (4k+1), decoded whole")
    p.add_argument("--eval_frames", type=int, default=65, help="frames per held-out clip (4k+1), decoded whole")
    p.add_argument("--clips", type=int, default=256, help="training clips (at most this many of --data)")
    p.add_argument("--holdout", type=int, default=16, help="held-out clips for the measure")
    p.add_argument("--speed", type=float, help="synthetic flights' speed (default: the world's recipe, else 1)")
    p.add_argument("--generated", type=int, default=0,
                   help="also train on this many flights the world generates itself (a causal world's stream with "
                        "its serve.json settings: the latents the decoder meets in serving), decoded by the teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=4, help="clips per step")
    p.add_argument("--crop", type=int, default=0, help="train on random crops of this many latent cells a side "
                                                      "(0 = whole frames; the measure always decodes whole frames)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the written weights (0 = the last weights)")
    p.add_argument("--l1", type=float, default=1.0, help="weight of the L1 loss to the teacher's frames")
    p.add_argument("--mse", type=float, default=1.0, help="weight of the MSE loss to the teacher's frames")
    p.add_argument("--motion", type=float, default=1.0, help="weight of the L1 loss on frame-to-frame differences")
    p.add_argument("--gan_weight", type=float, default=0.0, help="patch-discriminator loss weight (0 = off)")
    p.add_argument("--gan_start", type=int, default=0, help="step the discriminator starts at")
    p.add_argument("--gan_lr", type=float, default=2e-4)
    p.add_argument("--tiled", action="store_true", help="the teacher encodes and decodes in tiles (large frames)")
    p.add_argument("--save_steps", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the teacher's dtype")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no_progress", dest="progress", action="store_false")
    p.add_argument("--export_only", action="store_true",
                   help="write the decoder from --work's latest checkpoint as it is (no further training)")
    return p


def check_args(p: argparse.ArgumentParser, a) -> None:
    """Refuse bad options by name before anything is built."""
    if a.model_dir and not a.data:
        p.error("--data: --model_dir needs clips (a dataset CSV or a folder of mp4s)")
    for name in ("frames", "eval_frames"):
        value = getattr(a, name)
        if value < 1 + FRAMES_PER_LATENT or (value - 1) % FRAMES_PER_LATENT:
            p.error(f"--{name} must be 4k+1 with k >= 1 (5, 9, 17, ...), got {value}")
    for name in ("steps", "batch", "clips", "holdout", "save_steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.generated < 0:
        p.error(f"--generated must be >= 0, got {a.generated}")
    if a.generated and a.model_dir:
        p.error("--generated: needs --world or --preset (a world whose controller flies the flights)")
    if a.crop < 0:
        p.error(f"--crop must be >= 0 latent cells, got {a.crop}")
    for name in ("lr", "gan_lr"):
        if not getattr(a, name) > 0:
            p.error(f"--{name} must be > 0, got {getattr(a, name)}")
    for name in ("l1", "mse", "motion", "gan_weight"):
        value = getattr(a, name)
        if not (math.isfinite(value) and value >= 0):
            p.error(f"--{name} must be a number >= 0, got {value}")
    if not 0 <= a.ema < 1:
        p.error(f"--ema must be in [0, 1), got {a.ema}")
    if a.speed is not None and not a.speed > 0:
        p.error(f"--speed must be > 0, got {a.speed}")
    for name in ("height", "width"):
        value = getattr(a, name)
        if value is not None and (value < 32 or value % 32):
            p.error(f"--{name} must be a positive multiple of 32, got {value}")
    a.size = a.size or ("full" if a.model_dir else "toy")
    try:
        student_config(a)
    except ValueError as error:
        p.error(f"student: {error}")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = build_parser()
    a = parser.parse_args(argv)
    check_args(parser, a)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        report = DistillRun(a, build_teacher(a)).run()
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"python -m training.distill_decoder: error: {error}\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
