"""Worlds: what the server generates with. ``load_world(settings)`` -> ``World`` (a pipeline plus serving defaults).

    --world random                 the tiny random-weight preset (``models.tiny``) on CPU: the UI says so plainly
    --world <name>                 a world registered in ``WORLD_FACTORIES`` (``register_world``), e.g. "toy"
    --world <folder>               a small world folder (``models.small_world``); its ``serve.json``
                                   (``models.serve_config``) gives the serving defaults (height, width, fps, ...)
    --model_dir <Wan2.2-TI2V-5B>   the real model (``WanActionPipeline.from_model_dir``), overrides --world
    --artifacts <folder>           a training output folder applied to the pipeline (controller, LoRA, action_stats)

The names and the checks of the world options before anything loads live in ``server.generation.world_args`` (no
torch). Pipelines come from ``models.loading.build_pipeline``. Settings fields that are not None (``--height``,
``--fps``, ...) override the world's defaults.

A world generates ``"chunked"`` (each flight chunk a TI2V generation from the previous chunk's last frame) or
``"causal"`` (a flight is one block-causal stream, ``models.stream``: blocks of ``block_frames`` latent frames, a
``window`` of context and the first image as a ``sink``), as its ``serve.json`` says; ``--generation``,
``--block_frames``, ``--window`` and ``--sink`` override it (the random preset and the real model are chunked unless
told). A causal world's ``chunk_frames`` is ``4 * block_frames + 1``: its first block sends that many frames, like a
first chunk, and every later block ``4 * block_frames``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Optional

from models.action_format import FRAMES_PER_LATENT, full_scale_from_stats, num_actions_for_frames
from models.fp8 import fp8_supported, quantize_dit_linears
from models.loading import build_pipeline
from models.options import CausalSettings, check_action_guidance, check_action_guidance_rescale
from models.serve_config import DEFAULT_PROMPT, SERVE_CONFIG_NAME, ServeConfig, load_serve_config
from models.small_world import attach_folder_small_decoder
from server.generation.world_args import (
    TOY_WORLD_DIR,
    WORLD_FACTORIES,
    check_world_args,
    register_world,
    toy_world_ships,
    with_world_resolved,
)
from server.media.images import list_samples
from server.settings import MAX_SESSIONS_CAP, Settings

log = logging.getLogger("wanfly.worlds")


@dataclass
class World:
    pipe: object
    name: str
    weights: str  # one line for the UI banner and /api/config
    random_weights: bool
    height: int
    width: int
    chunk_frames: int
    fps: int
    steps: int
    cfg_scale: float
    action_guidance: float = 1.0  # hover + g * (commanded - hover) per step (models.model_fn); 1 = off
    action_guidance_rescale: float = 0.0  # pull the guided step back to the commanded one's std; 0 = off
    prompt: str = DEFAULT_PROMPT
    sample: Optional[str] = None  # the bundled first frame the UI offers first (None = the first sample)
    notes: Optional[str] = None  # what a person should expect from the world (serve.json; the page shows it)
    autoregressive: bool = False  # trained on chunk-length clips: longer jobs are made chunk by chunk, as flights
    tiled: bool = False
    device: str = "cpu"
    full_scale: tuple = ()
    full_scale_source: list = field(default_factory=list)
    generation: str = "chunked"  # "chunked" | "causal" (models.serve_config.GENERATIONS)
    causal_settings: CausalSettings = field(default_factory=CausalSettings)  # blocks, window, sink (causal only)
    decoder: str = "wan"  # "wan" (the VAE decoder) | "small" (the world's distilled one; models.frames)
    decode_overlap: bool = False  # causal: each block decodes on its stream's lane (models.frames.lane) while the
    #   worker makes the next block
    warm: bool = False  # set by server.generation.generators.warm_up

    @property
    def causal(self) -> bool:
        return self.generation == "causal"

    @property
    def controller(self) -> bool:
        return getattr(self.pipe, "action_controller", None) is not None

    @property
    def max_frames(self) -> Optional[int]:
        """The longest video one generation can make; None for a causal world (a stream has no end)."""
        if self.causal:
            return None
        controller = getattr(self.pipe, "action_controller", None)
        return FRAMES_PER_LATENT * controller.num_latent_frames + 1 if controller is not None else 81


def resolve_device(settings: Settings) -> tuple[str, object]:
    import torch
    device = settings.device
    if device == "auto":
        device = "cuda" if (settings.model_dir and torch.cuda.is_available()) else "cpu"
    if settings.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, settings.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype: unknown torch dtype {settings.dtype!r}")
    return device, dtype


def _random_world(settings: Settings, device: str, dtype) -> World:
    pipe = build_pipeline(preset="tiny", seed=settings.world_seed, device=device, torch_dtype=dtype)
    return World(pipe=pipe, name="random", random_weights=True, height=64, width=64, chunk_frames=9, fps=16, steps=2,
                 cfg_scale=1.0, device=device,
                 weights="RANDOM weights (tiny preset, untrained): the video is noise-like, not a learned world",
                 notes="Random, untrained weights: the picture is 64x64 noise that follows neither the prompt nor the "
                       "keys. It exists so the product runs anywhere; the toy world (--world toy) is a trained one.")


def _folder_world(folder: str, device: str, dtype) -> World:
    serve = load_serve_config(folder) or ServeConfig()  # read first: a bad serve.json fails before the weights load
    pipe = build_pipeline(world=folder, device=device, torch_dtype=dtype)
    name = os.path.basename(os.path.normpath(folder))
    return World(pipe=pipe, name=name, random_weights=False, height=serve.height, width=serve.width,
                 chunk_frames=serve.chunk_frames, fps=serve.fps, steps=serve.steps, cfg_scale=serve.cfg_scale,
                 action_guidance=serve.action_guidance, action_guidance_rescale=serve.action_guidance_rescale,
                 prompt=serve.prompt, sample=serve.sample, notes=serve.notes, autoregressive=serve.autoregressive,
                 device=device,
                 weights=serve.weights or f"small world {name} (trained, low resolution)",
                 generation=serve.generation, causal_settings=serve.causal_settings(), decoder=serve.decoder)


def _toy_world(settings: Settings, device: str, dtype) -> World:
    return replace(_folder_world(TOY_WORLD_DIR, device, dtype), name="toy")  # banner and sample: its serve.json


if toy_world_ships():
    register_world("toy", _toy_world)


def describe_world(settings: Settings) -> str:
    """What ``load_world`` will load, in a few words, before it does (for the start-up log)."""
    settings = with_world_resolved(settings)
    what = f"the model in {settings.model_dir}" if settings.model_dir else f"world {settings.world}"
    return what + (f" + artifacts {settings.artifacts}" if settings.artifacts else "")


def _real_world(settings: Settings, device: str, dtype) -> World:
    pipe = build_pipeline(model_dir=settings.model_dir, device=device, torch_dtype=dtype)
    return World(pipe=pipe, name="Wan2.2-TI2V-5B", random_weights=False, height=480, width=832, chunk_frames=17,
                 fps=24, steps=10, cfg_scale=5.0, tiled=True, device=device, weights="Wan2.2-TI2V-5B")


def _base_world(settings: Settings, device: str, dtype) -> World:
    if settings.model_dir:
        return _real_world(settings, device, dtype)
    if settings.world == "random":
        return _random_world(settings, device, dtype)
    if settings.world in WORLD_FACTORIES:
        return WORLD_FACTORIES[settings.world](settings, device, dtype)
    check_world_args(settings)  # names what is wrong with --world
    return _folder_world(settings.world, device, dtype)


def load_world(settings: Settings) -> World:
    """Build the pipeline named by the settings and apply artifacts and overrides (see the module docstring)."""
    import torch
    settings = with_world_resolved(settings)
    device, dtype = resolve_device(settings)
    threads = settings.threads or (max(1, (os.cpu_count() or 2) - 1) if device == "cpu" else 0)
    if threads:  # on CPU leave a core to the event loop and JPEG encoding (and avoid OpenMP oversubscription)
        torch.set_num_threads(threads)
    world = _base_world(settings, device, dtype)
    pipe = world.pipe
    if settings.artifacts:
        pipe.load_action_artifacts(settings.artifacts)
        world.weights += f" + action controller from {os.path.basename(os.path.normpath(settings.artifacts))}"
    world = with_frame_path(world, settings)
    if not world.controller:
        world.weights += " (no action controller: input does not steer)"
    overrides = {name: getattr(settings, name) for name in ("height", "width", "chunk_frames", "fps", "steps",
                                                            "cfg_scale", "action_guidance", "action_guidance_rescale")
                 if getattr(settings, name) is not None}
    world = with_generation(replace(world, **overrides), settings)
    world.full_scale, world.full_scale_source = full_scale_from_stats(getattr(pipe, "action_stats", None))
    check_world(world, settings)
    sessions = settings.max_sessions or MAX_SESSIONS_CAP
    pipe.prompt_cache_size = max(getattr(pipe, "prompt_cache_size", 8), 2 * (sessions + settings.max_waiting) + 4)
    log.info("world %s: %s, %dx%d, %s at %d fps, %d steps, cfg %.1f, action guidance %.1f (rescale %.2f) on %s, "
             "%s decoder", world.name, world.weights, world.width, world.height, describe_generation(world),
             world.fps, world.steps, world.cfg_scale, world.action_guidance, world.action_guidance_rescale, device,
             world.decoder)
    return world


def with_frame_path(world: World, settings: Settings) -> World:
    """The decoder (``--decoder``, else the world's serve.json), ``--decode_device``, ``--fp8`` and
    ``--decode_overlap`` applied to the world's pipeline; ValueError naming the option when the world cannot (no
    small decoder, no FP8 GPU)."""
    import torch
    pipe = world.pipe
    for folder in (settings.model_dir, settings.artifacts):  # the real model's small decoder, if one was made
        if folder and getattr(pipe, "small_decoder", None) is None:
            attach_folder_small_decoder(pipe, folder)
    decoder = settings.decoder or world.decoder
    pipe.use_decoder(decoder)  # ValueError naming decoder when the world has no small one
    if settings.decode_device:
        if settings.decode_device.startswith("cuda") and torch.device(settings.decode_device).index is not None \
                and torch.device(settings.decode_device).index >= torch.cuda.device_count():
            raise ValueError(f"decode_device: {settings.decode_device} is not a GPU of this machine "
                             f"({torch.cuda.device_count()} visible)")
        pipe.set_decode_device(settings.decode_device)
    if settings.fp8:
        if not fp8_supported(world.device):
            raise ValueError(f"fp8: the world runs on {world.device}; FP8 matmuls need a CUDA GPU of compute "
                             f"capability 8.9 or newer (H100, H200, L40S, ...)")
        quantize_dit_linears(pipe.dit)
    overlap = settings.decode_overlap
    if overlap is None:  # a second CUDA stream pays off on a GPU; on the CPU the cores are already all busy
        overlap = any(str(device).startswith("cuda") for device in (world.device, settings.decode_device))
    return replace(world, decoder=decoder, decode_overlap=overlap)


def describe_generation(world: World) -> str:
    if not world.causal:
        return f"chunked, {world.chunk_frames}-frame chunks"
    c = world.causal_settings
    return (f"causal, blocks of {FRAMES_PER_LATENT * c.block_frames} frames, window {c.window} latent frames"
            f"{' + the first image' if c.sink else ''}")


def with_generation(world: World, settings: Settings) -> World:
    """The world with ``--generation``, ``--block_frames``, ``--window`` and ``--sink`` applied (ValueError naming a
    bad one); a causal world's ``chunk_frames`` is its first block's frame count."""
    generation = settings.generation or world.generation
    given = {name: getattr(settings, name) for name in ("block_frames", "window", "sink")
             if getattr(settings, name) is not None}
    causal = replace(world.causal_settings, **given)  # CausalSettings checks each by name
    if generation != "causal":
        return replace(world, generation=generation, causal_settings=causal)
    chunk_frames = FRAMES_PER_LATENT * causal.block_frames + 1
    if settings.chunk_frames is not None and settings.chunk_frames != chunk_frames:
        raise ValueError(f"chunk_frames: a causal world makes blocks of block_frames={causal.block_frames} latent "
                         f"frames ({chunk_frames} frames in the first); set --block_frames, not --chunk_frames "
                         f"(got {settings.chunk_frames})")
    return replace(world, generation=generation, causal_settings=causal, chunk_frames=chunk_frames)


def check_world(world: World, settings: Settings) -> None:
    world.pipe.check_shape(world.height, world.width, world.chunk_frames)
    if num_actions_for_frames(world.chunk_frames) < 1:
        raise ValueError(f"chunk_frames must be at least 5 (4k+1 with k >= 1), got {world.chunk_frames}")
    if world.causal and not world.controller:
        raise ValueError("generation: a causal world needs an action controller (--artifacts)")
    if world.causal and world.cfg_scale != 1:
        raise ValueError(f"cfg_scale: a causal world generates without text CFG (1), got {world.cfg_scale}")
    if world.max_frames is not None and world.chunk_frames > world.max_frames:
        raise ValueError(f"chunk_frames {world.chunk_frames} exceeds the controller's {world.max_frames} frames")
    if not 1 <= world.fps <= 120:
        raise ValueError(f"fps must be in 1..120, got {world.fps}")
    if not 1 <= world.steps <= settings.max_steps:
        raise ValueError(f"steps must be in 1..{settings.max_steps}, got {world.steps}")
    check_action_guidance(world.action_guidance)
    check_action_guidance_rescale(world.action_guidance_rescale)
    if world.sample is not None:
        samples = list_samples(settings.web_dir)
        if world.sample not in samples:
            raise ValueError(f"sample: the world's {SERVE_CONFIG_NAME} names {world.sample!r}, which is not a "
                             f"bundled sample ({samples})")


def world_summary(world: Optional[World]) -> dict:
    if world is None:
        return {}
    return {"name": world.name, "weights": world.weights, "random_weights": world.random_weights,
            "controller": world.controller, "height": world.height, "width": world.width, "fps": world.fps,
            "chunk_frames": world.chunk_frames, "steps": world.steps, "cfg_scale": world.cfg_scale,
            "action_guidance": world.action_guidance, "action_guidance_rescale": world.action_guidance_rescale,
            "prompt": world.prompt, "sample": world.sample, "notes": world.notes,
            "autoregressive": world.autoregressive,
            "generation": world.generation, "block_frames": world.causal_settings.block_frames,
            "window": world.causal_settings.window, "sink": world.causal_settings.sink,
            "full_scale": list(world.full_scale),
            "full_scale_source": world.full_scale_source, "max_frames": world.max_frames, "decoder": world.decoder,
            "decode_overlap": world.decode_overlap}
