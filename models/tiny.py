"""The tiny random-weight preset (tests, laptops, ``--world random``): no downloads, seconds on a CPU.

A 2-layer 64-wide ``WanModel`` with the TI2V settings, the real ``VideoVAE38_`` at width 16, a 2-layer umT5-style
text encoder and a word tokenizer: ``models.small_world.SmallWorldConfig()``'s defaults, with deterministic random
weights per seed. ``build_tiny_controller`` is the matching controller (``ACTION_CONTROLLER_CONFIGS["tiny"]``).
"""
from __future__ import annotations

import torch

from .controller import ACTION_CONTROLLER_CONFIGS, WanActionController
from .pipeline import WanActionPipeline
from .small_world import SmallWorldConfig, build_world_pipeline


def build_tiny_pipeline(seed: int = 0, device="cpu", torch_dtype=torch.float32) -> WanActionPipeline:
    """The tiny random-weight preset. No controller is attached."""
    return build_world_pipeline(SmallWorldConfig(), seed=seed, device=device, torch_dtype=torch_dtype)


def build_tiny_controller(seed: int = 0, **overrides) -> WanActionController:
    """A controller matching the tiny DiT (the ``tiny`` preset), deterministic per seed."""
    config = dict(ACTION_CONTROLLER_CONFIGS["tiny"])
    config.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanActionController(**config)
