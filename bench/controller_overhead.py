"""One denoising step (DiT forward) with vs without the action controller, per injection type, at the real width.

    python -m bench.controller_overhead --small            # CPU: 3072 wide, 24 heads, ffn 14336, 2 layers, few tokens
    python -m bench.controller_overhead --device cuda      # GPU: 30 layers, 480x832x81 tokens (8190), bf16

Prints ratios (step time with controller / without) measured in this run and writes a result (bench.schema) to
--out, after every injection type (marked partial until the last).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import device_name
from bench.schema import command_line, figures_at, split, write_result
from models.action_format import num_actions_for_frames
from models.controller import INJECTION_TYPES, WanActionController
from models.model_dir import WAN_5B_DIT
from models.model_fn import model_fn_wan_action
from models.pipeline import compile_dit_and_controller

SETTINGS = ("layers", "tokens", "frames", "height", "width", "dtype", "repeats", "compiled")


def build_dit(layers: int, device, dtype):
    from diffsynth.models.wan_video_dit import WanModel
    with torch.device(device):
        dit = WanModel(**dict(WAN_5B_DIT, num_layers=layers))  # the Wan2.2-TI2V-5B DiT, random weights
    return dit.to(dtype).eval().requires_grad_(False)


def timed(fn, sync) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def paired_times(base_fn, test_fn, repeats: int, sync) -> tuple[float, float]:
    """Median times of two functions measured alternately, so drift on a shared machine hits both alike."""
    base_fn(), test_fn()  # warm-up
    base, test = [], []
    for _ in range(repeats):
        base.append(timed(base_fn, sync))
        test.append(timed(test_fn, sync))
    return statistics.median(base), statistics.median(test)


def figures(results: dict) -> list[dict]:
    """The headline numbers: the step-time ratio (with / without the controller) per injection type, named by the
    type, and the baseline step."""
    types = results.get("controller_overhead", {})
    return figures_at(results, [(f"controller_overhead.{t}", "ratio", t) for t in types] + [("baseline_step_s", "s")])


def write(path, results: dict, device, command: str, note: str | None = None) -> dict:
    settings, details = split(results, SETTINGS)
    return write_result(path, "controller_overhead", settings, figures(results), device, details=details,
                        command=command, note=note)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.controller_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU-sized: 2 layers, 9 frames at 256x256, 64 text tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT blocks and each controller as `python -m server --compile` does")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    command = command_line("bench.controller_overhead", argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    frames, height, width = (9, 256, 256) if args.small or device.type == "cpu" else (81, 480, 832)
    layers = args.layers or (2 if device.type == "cpu" else 30)
    repeats = args.repeats or (7 if device.type == "cpu" else 10)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    dit = build_dit(layers, device, dtype)
    if args.compile:
        compile_dit_and_controller(dit)
    steps = num_actions_for_frames(frames)
    latents = torch.randn(1, 48, steps + 1, height // 16, width // 16, device=device, dtype=dtype)
    context = torch.randn(1, 64 if device.type == "cpu" else 512, 4096, device=device, dtype=dtype)
    timestep = torch.tensor([700.0], device=device, dtype=dtype)
    binary = (torch.rand(1, steps, 8, device=device) > 0.5).to(dtype)
    magnitude = torch.rand(1, steps, 8, device=device).to(dtype) * binary
    tokens = (steps + 1) * (height // 32) * (width // 32)

    def step(controller=None):
        kwargs = dict(action_binary=binary, action_magnitude=magnitude) if controller is not None else {}
        with torch.no_grad():
            return model_fn_wan_action(dit=dit, action_controller=controller, latents=latents, timestep=timestep,
                                       context=context, fuse_vae_embedding_in_latents=True, **kwargs)

    results = {"layers": layers, "tokens": tokens, "frames": frames, "height": height, "width": width,
               "dtype": str(dtype), "repeats": repeats, "compiled": args.compile}
    overhead, baselines = {}, []
    for injection_type in INJECTION_TYPES:
        controller = WanActionController(hidden_size=3072, num_heads=24, num_layers=layers,
                                         injection_type=injection_type).to(device, dtype).eval()
        if args.compile:
            compile_dit_and_controller(None, controller)  # the blocks are compiled already
        base, with_controller = paired_times(step, lambda: step(controller), repeats, sync)
        baselines.append(base)
        ratio = with_controller / base
        overhead[injection_type] = round(ratio, 4)
        print(f"{injection_type:18s} step {with_controller * 1e3:8.1f} ms  vs  {base * 1e3:8.1f} ms  "
              f"ratio {ratio:.3f}", flush=True)
        if args.out and len(overhead) < len(INJECTION_TYPES):  # a run cut short keeps what it measured
            write(args.out, dict(results, controller_overhead=overhead), device, command,
                  note=f"partial: {len(overhead)} of {len(INJECTION_TYPES)} injection types measured")
    results["controller_overhead"] = overhead
    results["baseline_step_s"] = baseline = statistics.median(baselines)
    print(f"baseline step {baseline * 1e3:.1f} ms ({layers} layers, {tokens} tokens, 3072 wide, "
          f"{device_name(device)})")
    write(args.out, results, device, command)
    return results


if __name__ == "__main__":
    main()
