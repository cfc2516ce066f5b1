"""Time and peak memory of one training step: controller trainable, DiT frozen, gradient checkpointing on.

    python -m bench.train_step --small --out bench/results/train_step_cpu.json     # tiny preset, CPU, 64x64x9
    python -m bench.train_step --device cuda --out train_step.json                  # full size, 480x832x81

Two variants, as the trainer runs them (training/trainer_model.py): ``uncached`` runs the pipeline units every
step (VAE encode of the clip and its first frame; the prompt comes from the cache, T5 is not built at full size),
``cached`` starts from the latents and embeddings those units produced (``--cache`` in training). Each step is
diffsynth's ``FlowMatchSFTLoss`` through our ``model_fn`` (autocast to bf16 on GPU, as the trainer), backward and an
AdamW step on the controller. The first step of each variant is a warm-up; the median of the rest is reported.
The result (bench.schema) is written to --out at the end.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from PIL import Image

from bench.common import (
    PROMPT,
    build_full_pipeline,
    build_tiny_pipeline,
    device_name,
    now,
    parse_size,
    peak_memory,
    syncer,
)
from bench.schema import command_line, figures_at, split, write_result
from models.action_format import constant_actions, num_actions_for_frames, split_actions

SETTINGS = ("preset", "size", "dtype", "gradient_checkpointing", "trainable", "text_encoder", "repeats")


def clip(height: int, width: int, frames: int) -> list:
    """A random clip as PIL frames (what the dataset yields)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) for _ in range(frames)]


def unit_inputs(pipe, frames: list) -> tuple[dict, dict, dict]:
    """The trainer's pipeline inputs for one sample (training/trainer_model.py ``pipeline_inputs``)."""
    shared = {"input_video": frames, "height": frames[0].size[1], "width": frames[0].size[0],
              "num_frames": len(frames), "cfg_scale": 1, "tiled": False, "rand_device": pipe.device,
              "cfg_merge": False, "vace_scale": 1, "input_image": frames[0], "max_timestep_boundary": 1.0,
              "min_timestep_boundary": 0.0, "use_gradient_checkpointing": True,
              "use_gradient_checkpointing_offload": False}
    return shared, {"prompt": PROMPT}, {}


@torch.no_grad()
def encode(pipe, frames: list) -> tuple[dict, dict]:
    inputs = unit_inputs(pipe, frames)
    for unit in pipe.units:
        inputs = pipe.unit_runner(unit, pipe, *inputs)
    return inputs[0], inputs[1]


def make_trainable(pipe):
    """Controller in float32 and trainable (the trainer's setup); everything else frozen."""
    controller = pipe.action_controller.float().train().requires_grad_(True)
    pipe.dit.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    pipe.scheduler.set_timesteps(1000, training=True)
    return controller, torch.optim.AdamW(controller.parameters(), lr=1e-4)


def train_step(pipe, optimizer, shared, posi, actions, device, dtype, sync) -> dict:
    from diffsynth.diffusion.loss import FlowMatchSFTLoss
    started = now(sync)
    autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)
    with autocast:
        loss = FlowMatchSFTLoss(pipe, **shared, **posi, **actions)
    forward = now(sync)
    loss.backward()
    backward = now(sync)
    grads = [p.grad for p in optimizer.param_groups[0]["params"] if p.grad is not None]
    grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) \
        if grads else 0.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    done = now(sync)
    return {"forward_ms": (forward - started) * 1e3, "backward_ms": (backward - forward) * 1e3,
            "optimizer_ms": (done - backward) * 1e3, "loss": loss.item(), "grad_norm": grad_norm}


def run_variant(pipe, optimizer, frames, actions, cached, repeats, device, dtype, sync) -> dict:
    out = {"variant": "cached" if cached else "uncached"}
    cache = encode(pipe, frames) if cached else None
    rows = []
    with peak_memory(device, out):
        for _ in range(repeats + 1):
            started = now(sync)
            shared, posi = cache if cached else encode(pipe, frames)
            shared = dict(shared)  # FlowMatchSFTLoss writes noisy latents into its inputs
            encoded = now(sync)
            row = train_step(pipe, optimizer, shared, posi, actions, device, dtype, sync)
            row["encode_ms"] = (encoded - started) * 1e3
            row["step_ms"] = (now(sync) - started) * 1e3
            rows.append(row)
    for key in ("encode_ms", "forward_ms", "backward_ms", "optimizer_ms", "step_ms"):
        out[key] = round(statistics.median(r[key] for r in rows[1:]), 2)
    out["losses_finite"] = all(np.isfinite(r["loss"]) for r in rows)
    out["controller_grad_norm"] = round(rows[-1]["grad_norm"], 6)  # > 0: the loss reaches the controller
    return out


def figures(results: dict) -> list[dict]:
    """The headline numbers: the step with and without the cache (and its VAE encode), the speedup, peak GPU
    memory, the trainable parameters."""
    return figures_at(results, [(f"{variant}.{key}", "ms") for variant in ("cached", "uncached")
                                for key in ("step_ms", "encode_ms", "forward_ms", "backward_ms")]
                      + [("cached_speedup", "ratio"), ("cached.peak_gpu_gb", "GB"), ("uncached.peak_gpu_gb", "GB"),
                         ("trainable_params", "count")])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU: the tiny preset (models.tiny) at 64x64x9")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="full-size architecture even on CPU (a check of the "
                                                             "GPU code path with --layers 1 --size 64x64x5)")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--size", default=None, help="HxWxFRAMES (default 480x832x81, 64x64x9 with --small)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    small = args.small or (device.type == "cpu" and not args.full)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    height, width, frames = parse_size(args.size or ("64x64x9" if small else "480x832x81"))
    sync = syncer(device)
    pipe = build_tiny_pipeline(device, dtype) if small else build_full_pipeline(device, dtype, args.layers)
    controller, optimizer = make_trainable(pipe)
    binary, magnitude = split_actions(constant_actions(num_actions_for_frames(frames), {"Forward": 0.01}))
    actions = {"action_binary": binary.to(device), "action_magnitude": magnitude.to(device)}  # (1, T, 8) float32
    video = clip(height, width, frames)
    results = {"device": device_name(device), "preset": "tiny" if small else f"full size, {args.layers} layers",
               "size": f"{height}x{width}x{frames}", "dtype": str(dtype), "repeats": args.repeats,
               "gradient_checkpointing": True,
               "trainable": "action controller (float32), DiT and VAE frozen",
               "trainable_params": sum(p.numel() for p in controller.parameters()),
               "text_encoder": "tiny T5, cached" if small else "not built: random prompt embeddings from the cache"}
    for cached in (True, False):
        row = run_variant(pipe, optimizer, video, actions, cached, args.repeats, device, dtype, sync)
        results[row.pop("variant")] = row
        print(f"{'cached' if cached else 'uncached':8s} step {row['step_ms']:9.1f} ms (encode {row['encode_ms']:.1f}, "
              f"forward {row['forward_ms']:.1f}, backward {row['backward_ms']:.1f}, optimizer "
              f"{row['optimizer_ms']:.1f}) peak {row['peak_gpu_gb']} GB", flush=True)
    results["cached_speedup"] = round(results["uncached"]["step_ms"] / results["cached"]["step_ms"], 3)
    print(f"cached latents/embeddings: {results['cached_speedup']:.2f}x faster per step ({results['device']})")
    settings, details = split(results, SETTINGS)
    write_result(args.out, "train_step", settings, figures(results), device, details=details,
                 command=command_line("bench.train_step", argv))
    return results


if __name__ == "__main__":
    main()
