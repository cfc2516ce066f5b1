"""``python -m training.evaluate (--csv F.. | --recordings D.. | --synthetic N | --generate | --long_flight) --out DIR``

Does a video do what its actions asked? Reads each 4-frame interval's camera motion from optical flow and scores it
against the commanded (T, 2, 8) actions (``training.evaluation``); see docs/evaluation.md. Writes DIR/report.json,
DIR/summary.md and PNG plots; several folders / controllers go side by side in one report (the first is the
top-level headline).

Inputs:
    --csv FILE [--base_path DIR]   the dataset format ``video,prompt,action`` (paths relative to the CSV's folder)
    --recordings DIR [DIR ...]     folders of ``*.mp4`` + sibling ``*.json`` with ``actions`` (T, 2, 8) or
                                   ``chunks: [{"actions": (k, 2, 8)}, ...]`` (concatenated), e.g. server recordings
    --synthetic N                  N flights of the synthetic dataset (validation of the estimator)
    --generate                     the fixed flight suite (``training.evaluation.suite``), generated then scored
    --long_flight --world DIR ..   scripted long flights vs the true video (``training.evaluation.long_flight``)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from models.options import DECODERS
from training.evaluation.flow import FlowSettings
from training.evaluation.long_flight import mode_world
from training.evaluation.long_flight_report import long_flight_lines, report_long_flights
from training.evaluation.metrics import evaluate_clips
from training.evaluation.report import entry_labels, write_report
from training.evaluation.sources import load_csv, load_recordings, synthetic_flights
from training.evaluation.suite import generate_entries
from training.evaluation.vae_roundtrip import roundtrip_clips, roundtrip_label


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[1],
                                     epilog="See docs/evaluation.md.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", nargs="+", metavar="FILE", help="dataset CSV(s) video,prompt,action; one entry each")
    source.add_argument("--recordings", nargs="+", metavar="DIR", help="folder(s) of *.mp4 + *.json; one entry each")
    source.add_argument("--synthetic", type=int, metavar="N", help="render N synthetic dataset flights and score them")
    source.add_argument("--generate", action="store_true", help="generate the flight suite, then score it")
    source.add_argument("--long_flight", action="store_true", help="scripted long flights in --world(s) vs truth")
    parser.add_argument("--out", required=True, help="output folder (report.json, summary.md, *.png)")
    parser.add_argument("--labels", nargs="+", help="entry names (default: file/folder names)")
    parser.add_argument("--base_path", help="--csv: folder the video paths are relative to (default: the CSV's)")
    parser.add_argument("--focal", type=float, default=FlowSettings.focal, help="focal length / image width")
    parser.add_argument("--flow_stride", type=int, choices=(1, 2, 4),
                        help="frames between flow fits: 4 = interval ends (calibrated, default), 1 = every pair "
                             "summed (fast motion, e.g. the toy world; --long_flight default)")
    parser.add_argument("--max_clips", type=int, help="at most this many clips per entry (--generate: first frames)")
    parser.add_argument("--plot_clips", type=int, default=3, help="clips in magnitudes.png")
    parser.add_argument("--seed", type=int, default=0, help="--synthetic flights / --generate noise and scenes")
    parser.add_argument("--num_frames", type=int, help="frames per clip (4k+1; default 33 synthetic, 17 tiny, 81)")
    parser.add_argument("--speed", type=float, default=1.0, help="--synthetic: scale of the flights' magnitudes")
    parser.add_argument("--through_vae", metavar="WORLD", help="--synthetic: also through WORLD's VAE (+ --decoder)")
    parser.add_argument("--height", type=int, help="default 96 synthetic, 64 tiny, 480")
    parser.add_argument("--width", type=int, help="default 96 synthetic, 64 tiny, 832")
    gen = parser.add_argument_group("--generate")
    gen.add_argument("--preset", choices=["tiny"], help="the tiny random-weight preset (no downloads)")
    gen.add_argument("--model_dir", help="Wan2.2-TI2V-5B folder")
    gen.add_argument("--world", nargs="+", help="a small-world folder (e.g. worlds/toy); defaults from its serve.json "
                                                "(--long_flight: one or more, side by side)")
    gen.add_argument("--shuffled", action="store_true",
                     help="also score each model fed another flight's actions (a model that follows drops)")
    gen.add_argument("--with_random", action="store_true",
                     help="also score the tiny random-weight preset at the same settings")
    gen.add_argument("--artifacts", nargs="+", metavar="DIR", help="controller artifacts folder(s); one entry each")
    gen.add_argument("--images", help="folder of first frames (default: rendered synthetic worlds)")
    gen.add_argument("--scenes", type=int, default=2, help="rendered first frames when --images is not given")
    gen.add_argument("--prompt", help="prompt for --images without a sibling .txt")
    gen.add_argument("--flights", nargs="+", help="suite flights to run (default: all of SUITE in "
                                                  "training.evaluation.suite)")
    gen.add_argument("--steps", type=int, help="denoising steps (default 2 tiny, 30)")
    gen.add_argument("--cfg_scale", type=float, help="default 1.0 tiny, 5.0")
    gen.add_argument("--action_guidance", type=float,
                     help="hover + g * (commanded - hover) per step (default: the world's serve.json, else 1 = off)")
    gen.add_argument("--action_guidance_rescale", type=float,
                     help="0..1: pull each guided step back to the commanded prediction's std "
                          "(default: the world's serve.json, else 0 = off)")
    gen.add_argument("--decoder", choices=DECODERS, help="VAE (wan) or distilled (small); default serve.json")
    gen.add_argument("--device", help="default cuda when available")
    gen.add_argument("--torch_dtype", choices=["bfloat16", "float16", "float32"], help="default float32 tiny, bf16")
    gen.add_argument("--fps", type=float, default=24.0, help="fps of the saved generated clips")
    long = parser.add_argument_group("--long_flight (generation settings: each world's serve.json)")
    long.add_argument("--seconds", type=float, help="flight length (default 60)")
    long.add_argument("--window_seconds", type=float, help="window of the per-window measures (default 6)")
    long.add_argument("--edge_seconds", type=float, help="first vs last seconds compared (default 10, <= half)")
    long.add_argument("--turn_degrees", type=float, help="out-and-back turn (default 90)")
    return parser.parse_args(argv)


def build_entries(args, settings) -> tuple[list[dict], list[str]]:
    """(entries, notes) of the chosen input mode."""
    limit = (lambda clips: clips[:args.max_clips]) if args.max_clips else (lambda clips: clips)
    if args.through_vae and args.synthetic is None:
        raise ValueError("--through_vae needs --synthetic N")
    if args.csv:
        labels = entry_labels(args.labels, [Path(f).stem for f in args.csv])
        return [evaluate_clips(limit(load_csv(f, args.base_path)), settings, label, f"csv: {f}", progress=True)
                for f, label in zip(args.csv, labels)], []
    if args.recordings:
        labels = entry_labels(args.labels, [Path(d).resolve().name for d in args.recordings])
        return [evaluate_clips(limit(load_recordings(d)), settings, label, f"recordings: {d}", progress=True)
                for d, label in zip(args.recordings, labels)], []
    if args.synthetic is not None:
        if args.synthetic < 1:
            raise ValueError(f"--synthetic must be >= 1, got {args.synthetic}")
        frames = args.num_frames or 33
        if frames < 5 or frames % 4 != 1:
            raise ValueError(f"--num_frames: must be 4k+1 with k >= 1 (5, 9, ...), got {frames}")
        clips = synthetic_flights(args.synthetic, args.seed, frames, args.height or 96, args.width or 96,
                                  progress=True, speed=args.speed)
        entries = [evaluate_clips(clips, settings, entry_labels(args.labels, ["synthetic"])[0],
                                  f"synthetic dataset flights, seed {args.seed}", progress=True)]
        if args.through_vae:  # what the world's VAE keeps of the motion: its generated suite's ceiling
            decoder = args.decoder or "wan"
            clips = roundtrip_clips(clips, args.through_vae, progress=True, decoder=decoder)
            entries.append(evaluate_clips(clips, settings, *roundtrip_label(args.through_vae, decoder), progress=True))
        return entries, []
    return generate_entries(args, settings)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        args.world = mode_world(args)
        settings = FlowSettings(focal=args.focal, stride=args.flow_stride or (1 if args.long_flight else
                                                                              FlowSettings.stride))
        if args.long_flight:
            print("\n".join(long_flight_lines(report_long_flights(args, settings))))
            print(f"wrote {Path(args.out) / 'report.json'}")
            return 0
        if args.max_clips is not None and args.max_clips < 1:
            raise ValueError(f"--max_clips must be >= 1, got {args.max_clips}")
        entries, notes = build_entries(args, settings)
        report = write_report(args.out, entries, dataclasses.asdict(settings), notes, args.plot_clips)
    except (ValueError, OSError) as error:
        print(f"python -m training.evaluate: error: {error}", file=sys.stderr)
        return 2
    for row in report["comparison"]:
        chance = " (near chance)" if row["near_chance"] else ""
        acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        print(f"{row['label']}: accuracy {acc}{chance}, exact match {row['exact_match']:.3f}, "
              f"{row['clips']} clips, {row['intervals']} intervals")
    print(f"wrote {Path(args.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
