"""The steps of ``bench.real_weights`` that run in their own process:

    python -m bench.real_weights_steps load FOLDER --report FILE [--device cuda --compare BASE --drop_caches]
    python -m bench.real_weights_steps data DIR [--clips 2 --frames 17 --height 480 --width 832 --encoder auto]

``load``: ``build_pipeline(model_dir=FOLDER)`` (``WanActionPipeline.from_model_dir``) in bfloat16, then checks what
loaded (the classes and sizes of Wan2.2-TI2V-5B), encodes a prompt through the pipeline's own prompt unit, generates
5 frames at 256x256 in 2 steps and checks the video is finite; ``--compare BASE`` reports how far the DiT's LoRA
targets in block 0 moved from BASE (a merged folder). The report (JSON) holds the checks, times and peak memory;
the exit status is 1 when a check failed.

``data``: the training clips, from ``training.data.synthetic``. Its mp4 encoder is imageio-ffmpeg, which the GPU
machine lacks (its wheel, 68 MB, is over what a run carries), so there, and with ``--encoder cv2``, OpenCV writes
the clips (mp4v); the trainer reads either through OpenCV.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from models.fake_model_dir import DIT_INDEX
from models.loading import build_pipeline
from training.data import synthetic

PROMPT = "a drone flies over a forest towards a river"
FULL_SIZE = {"dit_dim": 3072, "dit_blocks": 30, "text_dim": 4096, "text_len": 512}
COMPARED = ("blocks.0.self_attn.q.weight", "blocks.0.self_attn.o.weight", "blocks.0.ffn.0.weight")


def drop_page_cache() -> bool:
    """Write the page cache back and drop it (root only), so the next read comes from the disk; False if refused."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def inspect_pipeline(pipe, expected: dict = FULL_SIZE, size: int = 256) -> dict:
    """Checks of a loaded pipeline (classes, sizes, dtype, a prompt encoded, a short finite generation)."""
    import torch
    from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder

    checks = {
        "dit": type(pipe.dit).__name__ == "WanModel" and pipe.dit.dim == expected["dit_dim"]
        and len(pipe.dit.blocks) == expected["dit_blocks"],
        "text_encoder": type(pipe.text_encoder).__name__ == "WanTextEncoder",
        "vae": type(pipe.vae).__name__ == "WanVideoVAE38",
        "tokenizer": pipe.tokenizer is not None,
        "division_factor_32": pipe.height_division_factor == pipe.width_division_factor == 32,
        "dtype": {p.dtype for p in pipe.dit.parameters()} == {pipe.torch_dtype},
    }
    started = time.perf_counter()
    with torch.no_grad():
        context = WanVideoUnit_PromptEmbedder().encode_prompt(pipe, PROMPT)
    checks["prompt_encoded"] = tuple(context.shape) == (1, expected["text_len"], expected["text_dim"]) and \
        bool(torch.isfinite(context).all())
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    video = pipe(prompt=PROMPT, input_image=Image.new("RGB", (size, size), (90, 120, 160)), height=size, width=size,
                 num_frames=5, num_inference_steps=2, cfg_scale=1.0, seed=0, tiled=False, output_type="floatpoint",
                 progress_bar_cmd=lambda steps: steps)
    checks["generation_finite"] = tuple(video.shape) == (1, 3, 5, size, size) and bool(torch.isfinite(video).all())
    return {"checks": checks, "encode_s": round(encode_s, 3), "generate_s": round(time.perf_counter() - started, 3),
            "parameters": {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                           for name in ("dit", "text_encoder", "vae")}}


def weight_change(base: str, merged: str, keys=COMPARED) -> dict:
    """Max |merged - base| of some DiT weights (the LoRA's targets in block 0), read from the shards."""
    from safetensors import safe_open

    with open(os.path.join(base, DIT_INDEX)) as f:
        weight_map = json.load(f)["weight_map"]
    out = {}
    for key in keys:
        shard = weight_map[key]
        with safe_open(os.path.join(base, shard), "pt") as a, safe_open(os.path.join(merged, shard), "pt") as b:
            out[key] = float((a.get_tensor(key).float() - b.get_tensor(key).float()).abs().max())
    return out


def load(folder: str, report: str, device: str = "cuda", compare=None, drop_caches: bool = False) -> int:
    import torch

    cold = drop_page_cache() if drop_caches else None
    started = time.perf_counter()
    pipe = build_pipeline(model_dir=folder, device=device, torch_dtype=torch.bfloat16)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    summary = {"folder": folder, "device": device, "page_cache_dropped": cold,
               "load_s": round(time.perf_counter() - started, 3), **inspect_pipeline(pipe)}
    if cuda:
        summary["peak_gpu_allocated_GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    if compare:
        summary["max_abs_change_from_base"] = weight_change(compare, folder)
    with open(report, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=1))
    return 0 if all(summary["checks"].values()) else 1


def write_mp4_cv2(path, frames, fps: float, *args, **kwargs) -> int:
    """``models.media.write_mp4``'s contract, with OpenCV's encoder (mp4v)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, count = None, 0
    try:
        for frame in frames:
            if writer is None:
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps),
                                         (frame.shape[1], frame.shape[0]))
                if not writer.isOpened():
                    raise ValueError(f"OpenCV cannot write {path}")
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    if count == 0:
        raise ValueError("frames: no frames to write")
    return count


def make_data(out: str, clips: int, frames: int, height: int, width: int, encoder: str = "auto") -> str:
    """The synthetic clips; returns the encoder used."""
    if encoder == "cv2" or (encoder == "auto" and importlib.util.find_spec("imageio_ffmpeg") is None):
        synthetic.write_mp4 = write_mp4_cv2  # this process only (see the module docstring)
        encoder = "cv2"
    rows = synthetic.make_dataset(out, clips, frames, height, width)
    print(f"wrote {len(rows)} clips of {frames} frames at {height}x{width} to {out} ({encoder})")
    return encoder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.real_weights_steps", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="step", required=True)
    load_args = commands.add_parser("load", help="load an original-layout folder and check it")
    load_args.add_argument("folder")
    load_args.add_argument("--report", required=True)
    load_args.add_argument("--device", default="cuda")
    load_args.add_argument("--compare", default=None, help="a base folder: report how far the DiT moved from it")
    load_args.add_argument("--drop_caches", action="store_true")
    data_args = commands.add_parser("data", help="the training clips")
    data_args.add_argument("out")
    for name, default in (("clips", 2), ("frames", 17), ("height", 480), ("width", 832)):
        data_args.add_argument(f"--{name}", type=int, default=default)
    data_args.add_argument("--encoder", choices=("auto", "cv2"), default="auto")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.step == "load":
        return load(args.folder, args.report, args.device, args.compare, args.drop_caches)
    make_data(args.out, args.clips, args.frames, args.height, args.width, args.encoder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
