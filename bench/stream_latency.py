"""Per-block speed of block-causal streams (``pipe.open_stream``) and, in the same run, the chunked mode's.

    python -m bench.stream_latency --small --out bench/results/stream_latency_cpu.json     # tiny preset, CPU
    python -m bench.stream_latency --full --layers 1 --sizes 64x64                        # full-size path, CPU
    python -m bench.stream_latency --device cuda --time_limit 170 --out stream_latency.json  # full size, GPU

The chunked mode first: today's TI2V chunk from the last frame at the real-time preset (``chunk_frames`` 17, its
steps, no CFG) at the first size, timed as ``bench.chunk_latency`` times it, eager and (with ``compiled`` among the
modes) after ``pipe.compile_for_inference()``: its frames/s (16 new frames per chunk) and a key's first frame on
the wire (units + denoise + the first new frame decoded, JPEG-encoded and handed to an asyncio loop).

Then the streams, one cell per (size, block_frames, window, steps, mode), the most important first (the first
value of each list; then cells differing from it in one knob, then two, ...). Per cell a stream is opened at that
size, run ``ceil(window / block_frames) + 1`` blocks to fill its window (and compile: ``models.causal.
compile_stream`` in the ``compiled`` mode), then ``--blocks`` blocks are timed. Per block: a key arrives (a sample
into ``server.inputs.InputTimeline``) -> its ``(block_frames, 2, 8)`` actions -> ``step_iter``: denoise (``steps``
DiT passes of the block against the cache), decode (``StreamDecoder``, latent frame by latent frame), the clean
pass that writes the block into the cache (``commit``). The block's first frame is JPEG-encoded and handed off as
soon as it is decoded: ``key_to_wire_ms``. ``block_ms`` excludes that JPEG and hand-off (the server does them on
its delivery thread); ``fps`` = 4 * block_frames / block_ms; ``fps_vs_chunked`` = fps / the chunked mode's (same
mode, cells at the chunk's size only). Memory per stream: the K/V cache and the decoder's causal caches (bytes),
on CUDA the memory the open stream holds and the peak while it runs. Random weights (bench/common.py): speed does
not depend on them. The result (bench.schema) is rewritten after every cell (partial until the end); a cell or
chunked mode that fails is reported in ``details.failed`` and the run goes on (after a compiled cell fails, the
later compiled cells are not run).
"""
from __future__ import annotations

import argparse
import itertools
import math
import statistics

import numpy as np
import torch
from PIL import Image

from bench.chunk_latency import Handoff, run_chunk
from bench.common import (
    PROMPT,
    Deadline,
    build_full_pipeline,
    build_tiny_pipeline,
    device_name,
    now,
    peak_memory,
    syncer,
)
from bench.schema import command_line, figures_at, split, write_result
from models.action_format import ACTION_NAMES, DEFAULT_FULL_SCALE, FRAMES_PER_LATENT
from models.causal import COMPILE_MODES, compile_stream
from server.inputs import InputTimeline
from server.media.images import encode_jpeg
from server.protocol import frame_message
from server.settings import PRESETS

FPS = 24
QUALITY = 85
MODES = ("eager", "compiled")
SETTINGS = ("preset", "dtype", "fps", "tiled_decode", "sizes", "block_frames", "windows", "steps", "modes",
            "compile_mode", "blocks", "chunk_frames", "chunk_runs", "time_limit_s")
CELL_FIGURES = (("block_ms", "ms"), ("block_p90_ms", "ms"), ("denoise_ms", "ms"), ("decode_ms", "ms"),
                ("commit_ms", "ms"), ("fps", "frames/s"), ("fps_vs_chunked", "ratio"), ("key_to_wire_ms", "ms"),
                ("kv_cache_bytes", "bytes"), ("decoder_cache_bytes", "bytes"), ("stream_gpu_gb", "GB"),
                ("peak_gpu_gb", "GB"))
CHUNK_FIGURES = (("chunk_ms", "ms"), ("fps", "frames/s"), ("key_to_wire_ms", "ms"), ("peak_gpu_gb", "GB"))


# ---- options -----------------------------------------------------------------------------------------------------
def int_list(name: str, text: str, low: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if any(v < low for v in values):
        raise ValueError(f"{name}: every value must be >= {low}, got {text!r}")
    return values


def size_list(text: str) -> list[tuple[int, int]]:
    """"480x832,704x1280" -> [(480, 832), (704, 1280)]."""
    sizes = []
    for part in text.split(","):
        try:
            height, width = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise ValueError(f"sizes: expected HEIGHTxWIDTH like 480x832, got {part!r}") from None
        if height % 32 or width % 32 or height <= 0 or width <= 0:
            raise ValueError(f"sizes: {part!r} needs height and width positive multiples of 32")
        sizes.append((height, width))
    return sizes


def cell_order(sizes, block_frames, windows, steps, modes) -> list[dict]:
    """Every cell, the first value of each list first, then cells by how many knobs differ from it (size, block
    frames, window, steps), each in both modes back to back (a paired eager / compiled comparison)."""
    grid = list(itertools.product(range(len(sizes)), range(len(block_frames)), range(len(windows)),
                                  range(len(steps))))
    grid.sort(key=lambda idx: (sum(i > 0 for i in idx), idx))
    return [{"size": sizes[s], "block_frames": block_frames[b], "window": windows[w], "steps": steps[k],
             "mode": mode} for s, b, w, k in grid for mode in modes]


def cell_name(cell: dict) -> str:
    h, w = cell["size"]
    return f"{h}x{w}_b{cell['block_frames']}_w{cell['window']}_s{cell['steps']}_{cell['mode']}"


# ---- one stream --------------------------------------------------------------------------------------------------
class PartTimer:
    """Wraps a stream's denoise, decoder pushes and clean pass (instance attributes shadow the methods) and adds
    each call's time (after a device sync) to ``parts``."""

    def __init__(self, stream, sync):
        self.parts = {"denoise": 0.0, "decode": 0.0, "commit": 0.0}
        self.sync = sync
        stream._denoise = self.timed("denoise", stream._denoise)
        stream.decoder.push = self.timed("decode", stream.decoder.push)
        commit = self.timed("commit", stream._commit)
        # a no-op call is not a pass (a lookahead stream's commit also takes the next block's actions)
        stream._commit = lambda *next_raw: commit(*next_raw) if stream._pending is not None else None

    def timed(self, name, fn):
        def run(*args, **kwargs):
            started = now(self.sync)
            out = fn(*args, **kwargs)
            self.parts[name] += now(self.sync) - started
            return out
        return run

    def take(self) -> dict:
        out = {f"{k}_ms": round(v * 1e3, 2) for k, v in self.parts.items()}
        self.parts = dict.fromkeys(self.parts, 0.0)
        return out


def decoder_cache_bytes(stream) -> int:
    """Bytes of the decoder's causal caches (every tile's last frames of each causal conv)."""
    return sum(t.numel() * t.element_size() for tile in stream.decoder.tiles for t in tile.cache
               if isinstance(t, torch.Tensor))


def run_block(stream, timer, timeline, index: int, sync, handoff) -> dict:
    """One block from a key's arrival (see the module docstring). Times in ms."""
    b = stream.settings.block_frames
    key = now(sync)
    flags = [int(name == ACTION_NAMES[index % 2]) for name in ACTION_NAMES]  # keys alternate: Forward, Back, ...
    timeline.add(index, key * 1e3, flags, flags, received=key)
    actions, _ = timeline.actions(b, end=key + b * timeline.interval_s)  # (b, 2, 8): the block's playback window
    wire, served, first = None, 0.0, stream.blocks == 0
    for group in stream.step_iter(actions):  # (n, H, W, 3) uint8 per latent frame
        if first:  # the flight's frame 0 (the first image), before the block's own frames
            first = False
            continue
        if wire is None:
            started = now(sync)
            jpeg = encode_jpeg(group[0], QUALITY)
            jpeg_s = now(sync) - started
            handoff_s = handoff.send(frame_message(index, 0, jpeg))
            wire = now(sync) - key
            served = jpeg_s + handoff_s  # on the server's delivery thread, not on the generation path
    total = now(sync) - key
    return {"block_ms": round((total - served) * 1e3, 2), "key_to_wire_ms": round(wire * 1e3, 2),
            "jpeg_ms": round(jpeg_s * 1e3, 3), "handoff_ms": round(handoff_s * 1e3, 4), **timer.take()}


def run_cell(pipe, cell: dict, blocks: int, tiled: bool, sync, device, handoff, compile_mode: str) -> dict:
    """One stream: open, fill the window, time ``blocks`` blocks."""
    (height, width), b, window = cell["size"], cell["block_frames"], cell["window"]
    compile_stream(pipe.dit, compile_mode if cell["mode"] == "compiled" else None)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    out = {"name": cell_name(cell), **{k: v for k, v in cell.items() if k != "size"}, "size": f"{height}x{width}",
           "frames_per_block": FRAMES_PER_LATENT * b}
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else None
    started = now(sync)
    stream = pipe.open_stream(image, PROMPT, seed=0, steps=cell["steps"], block_frames=b, window=window,
                              height=height, width=width, tiled=tiled, keep_latents=False)
    out["open_ms"] = round((now(sync) - started) * 1e3, 2)
    timer, timeline = PartTimer(stream, sync), InputTimeline(DEFAULT_FULL_SCALE, FPS)
    warm = math.ceil(window / b) + 1  # the window fills; one block at full context (first calls, compilation)
    out["warmup_block_ms"] = [run_block(stream, timer, timeline, i, sync, handoff)["block_ms"] for i in range(warm)]
    out["stream_gpu_gb"] = round((torch.cuda.memory_allocated(device) - before) / 2**30, 3) if cuda else None
    with peak_memory(device, out):
        runs = [run_block(stream, timer, timeline, warm + i, sync, handoff) for i in range(blocks)]
    out.update(kv_cache_bytes=stream.cache.nbytes, decoder_cache_bytes=decoder_cache_bytes(stream),
               cache_frames=stream.cache.frames, blocks=runs)
    stream.close()
    compile_stream(pipe.dit, None)
    for key in ("block_ms", "denoise_ms", "decode_ms", "commit_ms", "key_to_wire_ms", "jpeg_ms"):
        out[key] = round(statistics.median(r[key] for r in runs), 3)
    out["block_p90_ms"] = round(float(np.percentile([r["block_ms"] for r in runs], 90)), 2)
    out["fps"] = round(out["frames_per_block"] / (out["block_ms"] / 1e3), 3)
    # A key that arrives just after a block took its actions waits for that block, then its own (derived).
    out["key_to_wire_worst_ms"] = round(out["block_ms"] + out["key_to_wire_ms"], 2)
    return out


# ---- the chunked mode ----------------------------------------------------------------------------------------------
def run_chunked(pipe, size, frames: int, steps: int, runs: int, tiled: bool, sync, device, handoff) -> dict:
    """The chunked mode as bench.chunk_latency times it: a warm-up chunk, then ``runs`` chunks (median kept)."""
    run_chunk(pipe, size + (frames,), 1, False, tiled, sync, device, handoff)  # warm-up (and compilation)
    chunks = [run_chunk(pipe, size + (frames,), steps, False, tiled, sync, device, handoff) for _ in range(runs)]
    median = sorted(chunks, key=lambda c: c["chunk_ms"])[len(chunks) // 2]
    new = frames - 1  # a later chunk's first frame repeats the previous one's last
    return {"size": median["size"], "steps": steps, "new_frames": new, "chunk_ms": median["chunk_ms"],
            "fps": round(new / (median["chunk_ms"] / 1e3), 3),
            # the key's chunk starts at the key: units and denoise, then its first new frame to the wire
            "key_to_wire_ms": round(median["denoise_ms"] + median["first_new_frame_on_wire_ms"], 2),
            "peak_gpu_gb": median["peak_gpu_gb"], "runs": chunks}


# ---- the result ----------------------------------------------------------------------------------------------------
def failed(results: dict, name: str, error: Exception) -> None:
    results["failed"][name] = f"{type(error).__name__}: {error}"[:1000]
    print(f"{name} FAILED: {results['failed'][name]}", flush=True)


def figures(results: dict) -> list[dict]:
    specs = [(f"chunked.{mode}.{key}", unit) for mode in MODES for key, unit in CHUNK_FIGURES]
    specs += [(f"cells.{name}.{key}", unit) for name in results["cells"] for key, unit in CELL_FIGURES]
    return figures_at(results, specs)


def write(path, results: dict, device, command: str, note: str | None = None) -> dict:
    settings, details = split(results, SETTINGS)
    return write_result(path, "stream_latency", settings, figures(results), device, details=details,
                        command=command, note=note)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU: the tiny preset (models.tiny)")
    parser.add_argument("--full", action="store_true", help="full-size architecture even on CPU (with --layers, "
                                                             "--sizes 64x64: a check of the GPU code path)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=30, help="DiT layers at full size")
    parser.add_argument("--sizes", default=None, help="comma-separated HxW (default 480x832,704x1280; small 64x64); "
                                                      "the chunked mode runs at the first")
    parser.add_argument("--block_frames", default="1,2", help="latent frames per block (comma-separated)")
    parser.add_argument("--windows", default="3,6", help="window sizes in latent frames (comma-separated)")
    parser.add_argument("--steps", default="4,2", help="denoising steps per block (comma-separated)")
    parser.add_argument("--modes", default=None, help="eager and/or compiled (default: both on CUDA, eager on CPU)")
    parser.add_argument("--compile_mode", default="default", help="torch.compile mode of the compiled mode")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks per cell (default 8; CPU 3)")
    parser.add_argument("--chunk_frames", type=int, default=PRESETS["realtime"]["chunk_frames"],
                        help="frames of the chunked mode's chunk (the real-time preset's)")
    parser.add_argument("--chunk_runs", type=int, default=3, help="timed chunks of the chunked mode (median kept)")
    parser.add_argument("--time_limit", type=float, default=None, help="seconds; later cells are skipped")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    command = command_line("bench.stream_latency", argv)

    device = torch.device(args.device)
    small = args.small or (device.type == "cpu" and not args.full)
    modes = (args.modes or ("eager,compiled" if device.type == "cuda" else "eager")).split(",")
    if any(mode not in MODES for mode in modes):
        raise ValueError(f"modes: expected eager and/or compiled, got {args.modes!r}")
    if args.compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode: expected one of {', '.join(COMPILE_MODES)}, got {args.compile_mode!r}")
    sizes = size_list(args.sizes or ("64x64" if small else "480x832,704x1280"))
    cells = cell_order(sizes, int_list("block_frames", args.block_frames, 1), int_list("windows", args.windows, 0),
                       int_list("steps", args.steps, 1), modes)
    blocks = args.blocks or (8 if device.type == "cuda" else 3)
    if blocks < 1 or args.chunk_runs < 1 or (args.chunk_frames - 1) % 4 or args.chunk_frames < 5:
        raise ValueError("blocks and chunk_runs must be >= 1, chunk_frames 4k+1 >= 5; got "
                         f"{blocks}, {args.chunk_runs}, {args.chunk_frames}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync, deadline, handoff = syncer(device), Deadline(args.time_limit), Handoff()
    tiled = not small  # as bench.chunk_latency and the served real world
    started = now(sync)
    pipe = build_tiny_pipeline(device, dtype) if small else build_full_pipeline(device, dtype, args.layers)
    results = {"device": device_name(device), "preset": "tiny" if small else f"full size, {args.layers} layers",
               "dtype": str(dtype), "fps": FPS, "tiled_decode": tiled, "sizes": [f"{h}x{w}" for h, w in sizes],
               "block_frames": args.block_frames, "windows": args.windows, "steps": args.steps, "modes": modes,
               "compile_mode": args.compile_mode, "blocks": blocks, "chunk_frames": args.chunk_frames,
               "chunk_runs": args.chunk_runs, "time_limit_s": args.time_limit,
               "build_s": round(now(sync) - started, 2), "chunked": {}, "cells": {}, "failed": {}}
    print(f"{results['device']}: {results['preset']}, {len(cells)} cells", flush=True)

    chunk_steps = PRESETS["realtime"]["steps"]
    for mode in modes:
        if not deadline.allows(f"chunked {mode}"):
            continue
        try:
            if mode == "compiled":
                pipe.compile_for_inference(mode=args.compile_mode)  # the DiT blocks: what the chunked mode runs
            chunked = run_chunked(pipe, sizes[0], args.chunk_frames, chunk_steps, args.chunk_runs, tiled, sync,
                                  device, handoff)
        except Exception as error:  # one GPU run is precious: report, keep measuring the rest
            failed(results, f"chunked {mode}", error)
            continue
        results["chunked"][mode] = chunked
        print(f"chunked {mode} {chunked['size']} {chunk_steps} steps: chunk {chunked['chunk_ms']:.0f} ms, "
              f"{chunked['fps']:.2f} frames/s, key to wire {chunked['key_to_wire_ms']:.0f} ms", flush=True)

    spent: dict = {}  # (size, mode) -> seconds of the last such cell: the estimate for the next
    broken: dict = {}  # mode -> the cell where it failed (compiled: later compiled cells are not run)
    for cell in cells:
        name = cell_name(cell)
        if not deadline.allows(name, spent.get((cell["size"], cell["mode"]), 0.0)):
            continue
        if cell["mode"] in broken:
            results["failed"][name] = f"not run: the {cell['mode']} mode failed in {broken[cell['mode']]}"
            continue
        cell_started = now(sync)
        try:
            out = run_cell(pipe, cell, blocks, tiled, sync, device, handoff, args.compile_mode)
        except Exception as error:  # a compile or memory failure: report it, keep measuring the other cells
            compile_stream(pipe.dit, None)
            failed(results, name, error)
            if cell["mode"] == "compiled":
                broken.setdefault("compiled", name)
            continue
        spent[(cell["size"], cell["mode"])] = out["cell_s"] = round(now(sync) - cell_started, 2)
        chunked = results["chunked"].get(cell["mode"]) or results["chunked"].get("eager")
        if chunked and out["size"] == chunked["size"].rsplit("x", 1)[0]:
            out["fps_vs_chunked"] = round(out["fps"] / chunked["fps"], 3)
        results["cells"][name] = out
        print(f"{name}: block {out['block_ms']:.0f} ms (p90 {out['block_p90_ms']:.0f}; denoise {out['denoise_ms']:.0f},"
              f" decode {out['decode_ms']:.0f}, commit {out['commit_ms']:.0f}), {out['fps']:.2f} frames/s"
              f" ({out.get('fps_vs_chunked', float('nan')):.2f}x chunked), key to wire {out['key_to_wire_ms']:.0f} ms,"
              f" kv {out['kv_cache_bytes'] / 2**20:.1f} MiB, decoder {out['decoder_cache_bytes'] / 2**20:.1f} MiB,"
              f" cell {out['cell_s']:.0f} s", flush=True)
        if args.out:  # after every cell: a run cut short by its time limit keeps what it measured
            write(args.out, results, device, command, note=f"partial: measured up to {name}")
    results["skipped"] = deadline.skipped
    handoff.close()
    write(args.out, results, device, command)
    return results


if __name__ == "__main__":
    main()
