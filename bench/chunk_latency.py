"""The breakdown of one flight chunk and the real-time factor (video seconds generated per wall second).

    python -m bench.chunk_latency --small --out bench/results/chunk_latency_cpu.json       # tiny preset, CPU
    python -m bench.chunk_latency --device cuda --out chunk_latency.json --time_limit 240  # full size, random weights

Per size (HxWxFRAMES) one chunk is timed part by part: the pipeline units before denoising (first-frame VAE
encode; prompt from the cache), each DiT step with CFG off and on, the streaming VAE decode (first group, first new
frame, whole chunk), JPEG encoding per frame and the hand-off of a frame message to an asyncio loop (the server's
path to the socket). Chunk times for 2/4/8 steps with CFG on/off are then *derived* from those measured parts
(marked ``derived``); the real-time preset (``server.settings.PRESETS["realtime"]``) is measured end to end.
``realtime_factor`` = new video seconds of a chunk ((frames - 1) / fps: a later chunk's first frame repeats the
previous one's last) / the chunk's wall time (denoise + decode; JPEG runs on the delivery thread alongside).
Full size: see bench/common.py (random weights, T5 not built). Peak GPU memory is max_memory_allocated per run.
The result (bench.schema) is written to --out after the preset and after every size (partial until the end).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time

import numpy as np
import torch
from PIL import Image

from bench.common import (
    NEGATIVE,
    PROMPT,
    Deadline,
    build_full_pipeline,
    build_tiny_pipeline,
    device_name,
    now,
    parse_size,
    peak_memory,
    syncer,
)
from bench.schema import command_line, figures_at, split, write_result
from models.action_format import constant_actions, num_actions_for_frames
from models.media import video_to_frames
from models.pipeline import CachedPromptEmbedder
from server.media.images import encode_jpeg
from server.protocol import frame_message
from server.settings import PRESETS

FPS = 24
STEP_GRID = (2, 4, 8)
SETTINGS = ("preset", "dtype", "fps", "text_encoder", "tiled_decode", "compiled", "sizes", "preset_runs",
            "time_limit_s")


class StepTimer:
    """A ``progress_bar_cmd`` that marks the time (after a device sync) before the first and after every step."""

    def __init__(self, sync):
        self.sync, self.marks = sync, []

    def __call__(self, timesteps):
        self.marks = [now(self.sync)]
        for timestep in timesteps:
            yield timestep
            self.marks.append(now(self.sync))

    @property
    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class Handoff:
    """An asyncio loop on its own thread, as the server's: measures ``call_soon_threadsafe`` until the loop ran
    the callback (the engine -> connection path; the WebSocket send itself is measured by ``bench.serving``)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.received: list[bytes] = []

    def send(self, message: bytes) -> float:
        done = threading.Event()

        def arrive():
            self.received.append(message)
            done.set()
        started = time.perf_counter()
        self.loop.call_soon_threadsafe(arrive)
        done.wait()
        return time.perf_counter() - started

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def chunk_inputs(pipe, height, width, frames, steps, cfg, tiled, timer):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    actions = constant_actions(num_actions_for_frames(frames), {"Forward": 0.01, "Yaw Left": 1.0})  # (T, 2, 8)
    return dict(prompt=PROMPT, negative_prompt=NEGATIVE, input_image=image, actions=actions, height=height,
                width=width, num_frames=frames, num_inference_steps=steps, seed=0, cfg_scale=5.0 if cfg else 1.0,
                tiled=tiled, progress_bar_cmd=timer)


def run_chunk(pipe, size, steps, cfg, tiled, sync, device, handoff, quality=85, decode=True) -> dict:
    """One chunk, part by part (see the module docstring). Times in ms."""
    height, width, frames = size
    timer = StepTimer(sync)
    out = {"size": f"{height}x{width}x{frames}", "steps": steps, "cfg": cfg}
    with peak_memory(device, out):
        started = now(sync)
        latents = pipe.generate_latents(**chunk_inputs(pipe, height, width, frames, steps, cfg, tiled, timer))
        denoised = now(sync)
        out["units_ms"] = round((timer.marks[0] - started) * 1e3, 2)
        out["step_ms"] = [round(s * 1e3, 2) for s in timer.steps]
        out["denoise_ms"] = round((denoised - started) * 1e3, 2)
        if not decode:
            return out
        decoded, first_new, group_ms = [], None, []
        for video in pipe.stream_decode(latents, tiled=tiled, group=1):
            group = video_to_frames(video)  # (n, H, W, 3) on the host: waits for the device
            group_ms.append(round((time.perf_counter() - denoised) * 1e3, 2))
            if first_new is None and sum(len(g) for g in decoded) + len(group) > 1:
                index = 1 - sum(len(g) for g in decoded)  # frame 1: the first one a later chunk sends
                handoff.send(frame_message(0, 1, encode_jpeg(group[index], quality)))
                first_new = time.perf_counter() - denoised
            decoded.append(group)
        finished = time.perf_counter()
    video = np.concatenate(decoded)  # (F, H, W, 3)
    jpeg_s, handoff_s = [], []
    for i, frame in enumerate(video):
        t = time.perf_counter()
        message = frame_message(0, i, encode_jpeg(frame, quality))
        jpeg_s.append(time.perf_counter() - t)
        handoff_s.append(handoff.send(message))
    out.update(
        decode_ms=round((finished - denoised) * 1e3, 2), decode_group_ms=group_ms,
        first_frame_ms=group_ms[0], first_new_frame_on_wire_ms=round(first_new * 1e3, 2),
        chunk_ms=round((finished - started) * 1e3, 2),
        jpeg_ms_per_frame=round(statistics.median(jpeg_s) * 1e3, 3),
        handoff_ms_per_frame=round(statistics.median(handoff_s) * 1e3, 4),
        realtime_factor=round(((frames - 1) / FPS) / (finished - started), 3))
    out["server_ms_per_frame"] = round(out["jpeg_ms_per_frame"] + out["handoff_ms_per_frame"], 3)
    out["server_share_of_frame_budget"] = round(out["server_ms_per_frame"] / (1000 / FPS), 4)
    return out


def derive(size: str, frames: int, off: dict, on: dict) -> list[dict]:
    """Chunk time and real-time factor for 2/4/8 steps, CFG off/on, from measured units, steps and decode."""
    rows = []
    for cfg, run in ((False, off), (True, on)):
        step = statistics.median(run["step_ms"])
        for steps in STEP_GRID:
            chunk = off["units_ms"] + steps * step + off["decode_ms"]
            rows.append({"size": size, "steps": steps, "cfg": cfg, "chunk_ms": round(chunk, 1),
                         "realtime_factor": round(((frames - 1) / FPS) / (chunk / 1e3), 3), "derived": True})
    return rows


def prompt_encode_ms(pipe, sync) -> float | None:
    """The tiny preset's own T5 (a flight pays it once); None without a text encoder (full size)."""
    if pipe.text_encoder is None:
        return None
    pipe.prompt_cache.clear()
    with torch.no_grad():
        started = now(sync)
        CachedPromptEmbedder().process(pipe, PROMPT, True)
        return round((now(sync) - started) * 1e3, 2)


PRESET_FIGURES = ("chunk_ms", "units_ms", "denoise_ms", "decode_ms", "first_frame_ms", "first_new_frame_on_wire_ms",
                  "jpeg_ms_per_frame", "server_ms_per_frame")


def figures(results: dict) -> list[dict]:
    """The headline numbers: the real-time preset's factor, its chunk part by part, the server's share of the
    frame budget, peak GPU memory; the prompt encode and the warm-up."""
    return figures_at(results, [("realtime_factor", "ratio")]
                      + [(f"realtime_preset.{key}", "ms") for key in PRESET_FIGURES]
                      + [("realtime_preset.server_share_of_frame_budget", "ratio"),
                         ("realtime_preset.peak_gpu_gb", "GB"), ("prompt_encode_ms", "ms"), ("warmup_s", "s")])


def write(path, results: dict, device, command: str, note: str | None = None) -> dict:
    settings, details = split(results, SETTINGS)
    return write_result(path, "chunk_latency", settings, figures(results), device, details=details,
                        command=command, note=note)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.chunk_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU: the tiny preset (models.tiny)")
    parser.add_argument("--full", action="store_true", help="full-size architecture even on CPU (with --layers, "
                                                             "--sizes small: a check of the GPU code path)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=30, help="DiT layers at full size")
    parser.add_argument("--sizes", default=None, help="comma-separated HxWxFRAMES")
    parser.add_argument("--preset_runs", type=int, default=2, help="runs of the real-time preset (best is kept)")
    parser.add_argument("--time_limit", type=float, default=None, help="seconds; later sizes are skipped")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT blocks and the controller (as `python -m server --compile`); "
                             "the warm-up chunk pays the compilation")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    command = command_line("bench.chunk_latency", argv)

    device = torch.device(args.device)
    small = args.small or (device.type == "cpu" and not args.full)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync, deadline, handoff = syncer(device), Deadline(args.time_limit), Handoff()
    preset = PRESETS["realtime"]
    default_sizes = "64x64x9,64x64x17,128x128x17" if small else "480x832x17,480x832x33,480x832x81,704x1280x33"
    sizes = [parse_size(s) for s in (args.sizes or default_sizes).split(",")]
    preset_size = (preset["height"], preset["width"], preset["chunk_frames"])
    if device.type == "cpu":  # 480x832 takes minutes on 2 cores: the preset's steps and chunk at the first size
        preset_size = sizes[-1][:2] + (preset["chunk_frames"],)
    pipe = build_tiny_pipeline(device, dtype) if small else build_full_pipeline(device, dtype, args.layers)
    if args.compile:
        pipe.compile_for_inference()
    tiled = not small  # the real world decodes tiled (server.generation.worlds); at 480x832 that is one tile
    results = {"device": device_name(device), "preset": "tiny" if small else f"full size, {args.layers} layers",
               "dtype": str(dtype), "fps": FPS, "text_encoder": "tiny T5" if small else
               "not built: random (1, 512, 4096) prompt embeddings", "tiled_decode": tiled, "compiled": args.compile,
               "sizes": ["x".join(map(str, size)) for size in sizes], "preset_runs": args.preset_runs,
               "time_limit_s": args.time_limit, "prompt_encode_ms": prompt_encode_ms(pipe, sync), "runs": [],
               "derived": []}
    print(f"{results['device']}: {results['preset']}", flush=True)
    started = now(sync)
    run_chunk(pipe, sizes[0], 1, False, tiled, sync, device, handoff)  # warm-up: kernels, allocator, compilation
    results["warmup_s"] = round(now(sync) - started, 2)

    rt = {"steps": preset["steps"], "cfg": preset["cfg_scale"] != 1.0}
    runs = [run_chunk(pipe, preset_size, rt["steps"], rt["cfg"], tiled, sync, device, handoff)
            for _ in range(args.preset_runs)]
    best = min(runs, key=lambda r: r["chunk_ms"])
    results["realtime_preset"] = dict(best, preset={**preset, "height": preset_size[0], "width": preset_size[1]})
    results["realtime_factor"] = best["realtime_factor"]
    print(f"real-time preset {best['size']} {rt['steps']} steps cfg {rt['cfg']}: chunk {best['chunk_ms']:.0f} ms, "
          f"real-time factor {best['realtime_factor']:.3f}, first new frame on the wire "
          f"{best['first_new_frame_on_wire_ms']:.0f} ms after the last step", flush=True)
    if args.out:
        write(args.out, results, device, command, note="partial: the real-time preset measured, the sizes not yet")

    for size in sizes:
        name = "x".join(map(str, size))
        if not deadline.allows(name):
            continue
        off = run_chunk(pipe, size, 2, False, tiled, sync, device, handoff)
        on = run_chunk(pipe, size, 2, True, tiled, sync, device, handoff, decode=False)
        results["runs"] += [off, on]
        results["derived"] += derive(name, size[2], off, on)
        if args.out:  # after every size: a run cut short by its time limit keeps what it measured
            write(args.out, results, device, command, note=f"partial: measured up to {name}")
        print(f"{name}: units {off['units_ms']:.0f} ms, step {statistics.median(off['step_ms']):.0f} ms "
              f"(cfg {statistics.median(on['step_ms']):.0f} ms), decode {off['decode_ms']:.0f} ms, first new frame "
              f"{off['first_new_frame_on_wire_ms']:.0f} ms, jpeg {off['jpeg_ms_per_frame']:.2f} ms/frame, "
              f"peak {off['peak_gpu_gb']} GB", flush=True)
    for row in results["derived"]:
        print(f"  derived {row['size']:>12s} {row['steps']} steps cfg {str(row['cfg']):5s}: "
              f"{row['chunk_ms']:9.0f} ms  real-time factor {row['realtime_factor']:.3f}")
    results["skipped"] = deadline.skipped
    handoff.close()
    write(args.out, results, device, command)
    return results


if __name__ == "__main__":
    main()
