"""The frame path, part by part, in one run: decoders, JPEG, FP8, and a stream's real-time factor with each option.

    python -m bench.decode_latency --small --out bench/results/decode_latency_cpu.json      # CPU: tiny sizes
    python -m bench.decode_latency --device cuda --time_limit 130 --out decode_latency.json   # full size, GPU

Sections, most important first (a section or cell that would start after ``--time_limit`` is skipped and listed):
    decode    ms per latent frame (4 video frames) of a stream decoder at each size, steady state (after the first
              frames): the Wan2.2 VAE decoder (random weights, decoder width 256; --small: the tiny preset's) and the
              small decoder (``models.frames.small_decoder`` preset full; --small: toy), each eager, compiled
              (torch.compile of the decoder's forward) and channels-last with cudnn.benchmark (CUDA only); FLOPs and
              parameters per latent frame beside them (``models.frames.cost``); ``speedup`` = Wan eager / small
    jpeg      ms per frame: simplejpeg on the CPU, one frame at a time (the server's fallback) vs torchvision's GPU
              encoder on the 4 frames of a latent frame in one call, from host frames (the server's case: the upload
              counted) and from frames already on the GPU; ``budget_pct`` = share of a 24 fps frame's 41.7 ms
    realtime  a stream at the real-time settings (4 steps, no CFG, block_frames 1, window 3, sink) per size and
              option: the decoder (wan | small), compiled (``models.causal.compile_stream`` + the decoder),
              overlap (the decode lane: ``WorldStream.step_async``, the next block denoises while this one decodes),
              fp8 (``models.fp8``, last: it changes the DiT in place). Timed blocks after the window fills:
              ``block_ms`` (per block, wall, pipelined with overlap), ``fps`` = 4 / block_ms, ``realtime_factor`` =
              fps / 24
    fp8       the FP8 DiT against bf16: the relative error of one block's denoised latents (same noise, same cache)
              and the PSNR between their decoded frames
Random weights: speed does not depend on them (bench/common.py). The result (bench.schema) is rewritten after every
section.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from PIL import Image

from bench.common import PROMPT, Deadline, build_full_pipeline, build_tiny_pipeline, device_name, now, syncer
from bench.schema import command_line, figures_at, split, write_result
from bench.stream_latency import size_list
from models.causal import compile_stream
from models.fp8 import quantize_dit_linears, relative_error
from models.frames.cost import small_decoder_cost, wan_decoder_cost
from models.frames.small_decoder import PRESETS, SmallDecoder
from server.media.images import encode_jpegs

FPS = 24
QUALITY = 85
SETTINGS = ("preset", "dtype", "sizes", "small_preset", "repeats", "blocks", "time_limit_s")
OPTIONS = ("wan", "small", "small+overlap", "wan+compiled", "small+compiled", "small+compiled+overlap",
           "wan+compiled+overlap", "small+compiled+overlap+fp8", "small+fp8")


# ---- decoders ------------------------------------------------------------------------------------------------------
def time_decoder(pipe, size, repeats: int, sync) -> float:
    """Median ms per latent frame of ``pipe``'s chosen stream decoder at ``size``, after the first frames."""
    h, w = size[0] // 16, size[1] // 16
    decoder = pipe.new_stream_decoder(tiled=False)
    z = torch.randn(1, 48, 1, h, w, device=pipe.device, dtype=pipe.torch_dtype)  # (1, C, 1, h, w)
    for _ in range(3):  # frame 0 (1 frame), then warm-up (compilation, cuDNN's choice)
        decoder.push(z)
    times = []
    for _ in range(repeats):
        started = now(sync)
        decoder.push(z)
        times.append((now(sync) - started) * 1e3)
    return round(statistics.median(times), 3)


def set_variant(pipe, variant: str, decoder: str) -> None:
    """eager | compiled | channels_last for the chosen decoder's module (undone by ``reset_variant``)."""
    module = pipe.small_decoder if decoder == "small" else pipe.vae.model.decoder
    if variant == "compiled":
        module.forward = torch.compile(module.forward)
    elif variant == "channels_last":
        torch.backends.cudnn.benchmark = True
        fmt = torch.channels_last if decoder == "small" else torch.channels_last_3d
        module.to(memory_format=fmt)


def reset_variant(pipe, variant: str, decoder: str) -> None:
    module = pipe.small_decoder if decoder == "small" else pipe.vae.model.decoder
    if variant == "compiled" and "forward" in vars(module):
        del module.forward
    elif variant == "channels_last":
        torch.backends.cudnn.benchmark = False
        module.to(memory_format=torch.contiguous_format)


def run_decode(pipe, sizes, variants, repeats, sync, deadline, results) -> None:
    wan_model = pipe.vae.model
    for size in sizes:
        key = f"{size[0]}x{size[1]}"
        cell = results["decode"].setdefault(key, {})
        h, w = size[0] // 16, size[1] // 16
        cell["wan_cost"] = wan_decoder_cost(wan_model, h, w)
        cell["small_cost"] = small_decoder_cost(pipe.small_decoder.config, h, w)
        cell["flops_ratio"] = round(cell["small_cost"]["flops_per_latent_frame"] /
                                    cell["wan_cost"]["flops_per_latent_frame"], 5)
        for variant in variants:
            for decoder in ("wan", "small"):
                name = f"{decoder}_{variant}_ms"
                if not deadline.allows(f"decode {key} {name}"):
                    continue
                pipe.use_decoder(decoder)
                set_variant(pipe, variant, decoder)
                try:
                    cell[name] = time_decoder(pipe, size, repeats, sync)
                except Exception as error:  # one GPU run is precious: report, measure the rest
                    results["failed"][f"decode {key} {name}"] = f"{type(error).__name__}: {error}"[:500]
                finally:
                    reset_variant(pipe, variant, decoder)
                print(f"decode {key} {name}: {cell.get(name)}", flush=True)
        if cell.get("wan_eager_ms") and cell.get("small_eager_ms"):
            cell["speedup"] = round(cell["wan_eager_ms"] / cell["small_eager_ms"], 2)
        best = [cell[k] for k in cell if k.startswith("small_") and k.endswith("_ms")]
        if cell.get("wan_eager_ms") and best:
            cell["speedup_best"] = round(cell["wan_eager_ms"] / min(best), 2)


# ---- JPEG ----------------------------------------------------------------------------------------------------------
def test_frames(size, count: int = 4) -> np.ndarray:
    """(count, H, W, 3) uint8: smooth colour fields with fine noise (JPEG time depends on the content)."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (count, size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    frames = [np.asarray(Image.fromarray(c).resize((size[1], size[0]), Image.BILINEAR)) for c in coarse]
    return np.clip(np.stack(frames).astype(np.int16) + rng.integers(-6, 7, (count, *size, 3)), 0, 255).astype(np.uint8)


def run_jpeg(sizes, device, repeats: int, results) -> None:
    for size in sizes:
        frames = test_frames(size)
        cell = results["jpeg"].setdefault(f"{size[0]}x{size[1]}", {})
        cell["cpu_ms"] = per_frame(lambda: encode_jpegs(frames, QUALITY, "cpu"), len(frames), repeats)
        if device.type == "cuda":
            on_gpu = torch.from_numpy(frames).to(device)
            cell["gpu_from_host_ms"] = per_frame(lambda: encode_jpegs(frames, QUALITY, str(device)), len(frames),
                                                 repeats)
            cell["gpu_ms"] = per_frame(lambda: encode_jpegs(on_gpu, QUALITY, str(device)), len(frames), repeats)
        for name in ("cpu_ms", "gpu_from_host_ms"):
            if name in cell:
                cell[name.replace("_ms", "_budget_pct")] = round(100 * cell[name] / (1000 / FPS), 2)
        print(f"jpeg {size}: {cell}", flush=True)


def per_frame(encode, count: int, repeats: int) -> float:
    encode()  # warm-up (nvJPEG handles, simplejpeg's first call)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()  # encode_jpegs returns bytes: the device work is done
        encode()
        times.append((time.perf_counter() - started) * 1e3 / count)
    return round(statistics.median(times), 3)


# ---- streams at the real-time settings ---------------------------------------------------------------------------
def run_stream(pipe, size, option: str, blocks: int, sync) -> dict:
    """One stream with ``option``'s decoder and overlap; ms per block after the window fills."""
    parts = option.split("+")
    pipe.use_decoder(parts[0])
    overlap = "overlap" in parts
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8))
    stream = pipe.open_stream(image, PROMPT, seed=0, steps=4, block_frames=1, window=3, height=size[0],
                              width=size[1], keep_latents=False, overlap=overlap)
    hover = np.zeros((1, 2, 8))
    try:
        for _ in range(5):  # the window fills (3 blocks), compilation, the lane's first decode
            stream.step(hover) if not overlap else stream.step_async(hover).result()
        started = now(sync)
        if overlap:  # pipelined: block k + 1 denoises while block k decodes
            pending = None
            for _ in range(blocks):
                nxt = stream.step_async(hover)
                if pending is not None:
                    pending.result()
                pending = nxt
            pending.result()
        else:
            for _ in range(blocks):
                stream.step(hover)
        block_ms = (now(sync) - started) * 1e3 / blocks
    finally:
        stream.close()
    fps = 4 / (block_ms / 1e3)
    return {"block_ms": round(block_ms, 2), "fps": round(fps, 2), "realtime_factor": round(fps / FPS, 3)}


def set_compiled(pipe, on: bool) -> None:
    compile_stream(pipe.dit, "default" if on else None)
    for module in (pipe.small_decoder, pipe.vae.model.decoder):
        if on and "forward" not in vars(module):
            module.forward = torch.compile(module.forward)
        elif not on and "forward" in vars(module):
            del module.forward


def run_realtime(pipe, sizes, options, blocks, sync, deadline, results) -> None:
    for option in options:
        if "fp8" in option and not results.get("fp8_applied"):
            apply_fp8(pipe, sizes[0], sync, results)
        for size in sizes:
            name = f"{size[0]}x{size[1]} {option}"
            if not deadline.allows(f"realtime {name}"):
                continue
            set_compiled(pipe, "compiled" in option)
            try:
                results["realtime"][name] = run_stream(pipe, size, option, blocks, sync)
            except Exception as error:
                results["failed"][f"realtime {name}"] = f"{type(error).__name__}: {error}"[:500]
            print(f"realtime {name}: {results['realtime'].get(name)}", flush=True)
        set_compiled(pipe, False)


def apply_fp8(pipe, size, sync, results) -> None:
    """Quantise the DiT in place; before that, one block in bf16 and after it the same block in FP8."""
    bf16 = one_block(pipe, size)
    results["fp8"]["linears"] = quantize_dit_linears(pipe.dit)
    results["fp8_applied"] = True
    fp8 = one_block(pipe, size)
    diff = (bf16[1].astype(np.float64) - fp8[1]) ** 2
    results["fp8"].update(size=f"{size[0]}x{size[1]}", latent_relative_error=round(relative_error(bf16[0], fp8[0]), 5),
                          frames_psnr_db=round(float(10 * np.log10(255 ** 2 / max(diff.mean(), 1e-10))), 2))
    print(f"fp8: {results['fp8']}", flush=True)


def one_block(pipe, size) -> tuple[torch.Tensor, np.ndarray]:
    """The first block's latents and frames of a fixed stream (same image, seed and actions)."""
    pipe.use_decoder("small")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (*size, 3), dtype=np.uint8))
    stream = pipe.open_stream(image, PROMPT, seed=0, steps=4, height=size[0], width=size[1])
    frames = stream.step(np.zeros((1, 2, 8)))
    latents = stream.latents[:, :, -1:].float().cpu()
    stream.close()
    return latents, frames


# ---- the run -------------------------------------------------------------------------------------------------------
def figures(results: dict) -> list[dict]:
    specs = []
    for key, cell in results["decode"].items():
        specs += [(f"decode.{key}.{k}", "ms") for k in cell if k.endswith("_ms")]
        specs += [(f"decode.{key}.{k}", "ratio") for k in ("speedup", "speedup_best", "flops_ratio")]
    for key, cell in results["jpeg"].items():
        specs += [(f"jpeg.{key}.{k}", "ms" if k.endswith("_ms") else "%") for k in cell]
    for name in results["realtime"]:
        specs += [(f"realtime.{name}.block_ms", "ms"), (f"realtime.{name}.fps", "frames/s"),
                  (f"realtime.{name}.realtime_factor", "ratio")]
    specs += [("fp8.latent_relative_error", "ratio"), ("fp8.frames_psnr_db", "dB")]
    return figures_at(results, specs)


def write(path, results, device, command, note=None) -> dict:
    settings, details = split({k: v for k, v in results.items() if k != "fp8_applied"}, SETTINGS)
    return write_result(path, "decode_latency", settings, figures(results), device, details=details, command=command,
                        note=note)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU: the tiny preset and the toy small decoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=30, help="DiT layers at full size")
    parser.add_argument("--sizes", help="comma-separated HxW (default 480x832,704x1280; --small 64x64,128x128)")
    parser.add_argument("--options", help=f"realtime options, comma-separated (default: all of {list(OPTIONS)}; "
                                          "without CUDA the compiled ones are left out)")
    parser.add_argument("--repeats", type=int, default=None, help="timed decodes / JPEG rounds (default 10; CPU 3)")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks per realtime cell (default 8; CPU 3)")
    parser.add_argument("--time_limit", type=float, default=None, help="seconds; later cells are skipped")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    command = command_line("bench.decode_latency", argv)
    device = torch.device(args.device)
    cuda, small = device.type == "cuda", args.small or device.type == "cpu"
    options = args.options.split(",") if args.options else [o for o in OPTIONS if cuda or "compiled" not in o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"options: unknown {unknown}; expected some of {list(OPTIONS)}")
    sizes = size_list(args.sizes or ("64x64,128x128" if small else "480x832,704x1280"))
    repeats, blocks = args.repeats or (10 if cuda else 3), args.blocks or (8 if cuda else 3)
    dtype = torch.bfloat16 if cuda else torch.float32
    sync, deadline = syncer(device), Deadline(args.time_limit)
    pipe = build_tiny_pipeline(device, dtype) if small else build_full_pipeline(device, dtype, args.layers)
    small_preset = "toy" if small else "full"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe.use_decoder("small", SmallDecoder(copy.deepcopy(PRESETS[small_preset])))
    results = {"device": device_name(device), "preset": "tiny" if small else f"full size, {args.layers} layers",
               "dtype": str(dtype), "sizes": [f"{h}x{w}" for h, w in sizes], "small_preset": small_preset,
               "repeats": repeats, "blocks": blocks, "time_limit_s": args.time_limit, "decode": {}, "jpeg": {},
               "realtime": {}, "fp8": {}, "failed": {}}
    variants = ["eager", "compiled", "channels_last"] if cuda else ["eager"]
    run_decode(pipe, sizes, variants[:1], repeats, sync, deadline, results)  # eager first: the headline
    write(args.out, results, device, command, note="partial")
    run_jpeg(sizes, device, repeats, results)
    write(args.out, results, device, command, note="partial")
    run_realtime(pipe, sizes, options, blocks, sync, deadline, results)
    write(args.out, results, device, command, note="partial")
    run_decode(pipe, sizes, variants[1:], repeats, sync, deadline, results)
    results["skipped"] = deadline.skipped
    return write(args.out, results, device, command)


if __name__ == "__main__":
    main()
