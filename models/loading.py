"""Building a ``WanActionPipeline`` from what a user names: the one place the server, evaluation, the trainer and
the benchmarks get their pipelines from. Exactly one source:

    preset="tiny"       the tiny random-weight preset (``models.tiny``), with its random controller
    preset="random-5b"  the full Wan2.2-TI2V-5B architecture with random weights, built on the device (benchmarks;
                        no text encoder: fill ``pipe.prompt_cache`` with embeddings)
    world=FOLDER        a small-world folder (``models.small_world``), with its own controller when it ships one
    model_dir=FOLDER    an original Wan2.2-TI2V-5B folder (``WanActionPipeline.from_model_dir``), no network

``artifacts`` (a training run's folder, ``models.artifacts``) then replaces the controller (and fuses its LoRA).
``controller=False`` leaves the presets without their random controller (the trainer attaches its own).
"""
from __future__ import annotations

from typing import Optional

import torch

from .controller import WanActionController
from .model_dir import WAN_5B_DIT, check_model_dir
from .pipeline import WanActionPipeline
from .small_world import load_small_world
from .tiny import build_tiny_controller, build_tiny_pipeline

PRESETS = ("tiny", "random-5b")



def build_pipeline(*, preset: Optional[str] = None, world: Optional[str] = None, model_dir: Optional[str] = None,
                   artifacts: Optional[str] = None, device="cpu", torch_dtype=torch.float32, seed: int = 0,
                   controller: bool = True, controller_overrides: Optional[dict] = None,
                   tokenizer_path: Optional[str] = None, layers: int = 30) -> WanActionPipeline:
    """See the module docstring. ValueError when not exactly one source is named or a preset is unknown;
    FileNotFoundError naming what a folder lacks."""
    given = [name for name, value in (("preset", preset), ("world", world), ("model_dir", model_dir)) if value]
    if len(given) != 1:
        raise ValueError(f"name exactly one of preset, world or model_dir (got {given or 'none'})")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; expected one of {list(PRESETS)}")
    overrides = controller_overrides or {}
    if preset == "tiny":
        pipe = build_tiny_pipeline(seed, device=device, torch_dtype=torch_dtype)
        if controller and not artifacts:
            pipe.set_action_controller(build_tiny_controller(seed, **overrides))
    elif preset == "random-5b":
        pipe = build_random_5b(device, torch_dtype, layers, seed, overrides if controller else None)
    elif world:
        pipe = load_small_world(world, device=device, torch_dtype=torch_dtype)
    else:
        check_model_dir(model_dir)
        pipe = WanActionPipeline.from_model_dir(model_dir, device=device, torch_dtype=torch_dtype,
                                                tokenizer_path=tokenizer_path)
    if artifacts:
        pipe.load_action_artifacts(artifacts)
    return pipe


def build_random_5b(device, torch_dtype, layers: int = 30, seed: int = 0,
                    controller_overrides: Optional[dict] = None) -> WanActionPipeline:
    """The full-size DiT and VAE with random weights (speed does not depend on the values), initialised on the
    device (a 5B init on a CPU alone takes minutes); a random 5B-wide controller unless overrides is None."""
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.models.wan_video_vae import WanVideoVAE38

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            dit = WanModel(**dict(WAN_5B_DIT, num_layers=layers))
            vae = WanVideoVAE38()
            controller = None if controller_overrides is None else WanActionController(
                **{"hidden_size": 3072, "num_heads": 24, "num_layers": layers, **controller_overrides})
    pipe = WanActionPipeline(device=str(device), torch_dtype=torch_dtype)
    pipe.dit = dit.to(torch_dtype).eval().requires_grad_(False)
    pipe.vae = vae.to(torch_dtype).eval().requires_grad_(False)
    pipe.height_division_factor = pipe.width_division_factor = 32  # as from_pretrained
    return pipe.set_action_controller(controller) if controller is not None else pipe
