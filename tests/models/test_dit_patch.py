"""A small world whose DiT tokens are single latent cells (``SmallWorldConfig.patch`` 1; Wan2.2 uses 2x2): the
chunked forward with and without actions, the stream's cache, and the config check (tiny size, CPU)."""
import pytest
import torch

import models.model_fn as model_fn_module
from models.action_format import constant_actions, split_actions
from models.model_fn import model_fn_wan_action
from models.small_world import SmallWorldConfig, build_world_pipeline
from models.tiny import build_tiny_controller, build_tiny_pipeline

PROMPT = "a drone flies over a green field"


@pytest.fixture(scope="module")
def patch1():
    """A tiny world with 1x1 patches (4x the tokens of a frame) and a live controller."""
    pipe = build_world_pipeline(SmallWorldConfig(patch=1), seed=0)
    return pipe.set_action_controller(build_tiny_controller(0, injection_type="adaln_tmod", initial_scale=1.0))


def _forward(pipe, actions, controller=None):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 48, 3, 4, 4, generator=g)  # (B, C, F, h, w): 9 frames at 64x64
    context = torch.randn(1, 6, 32, generator=g)  # (B, S_text, text_dim)
    binary, magnitude = split_actions(actions) if actions is not None else (None, None)  # (1, T, 8) each
    return model_fn_wan_action(dit=pipe.dit, action_controller=controller, latents=latents,
                               timestep=torch.tensor([700.0]), context=context, action_binary=binary,
                               action_magnitude=magnitude, fuse_vae_embedding_in_latents=True)


@pytest.mark.parametrize("patch", [0, 3, 2.0, True])
def test_config_refuses_other_patches_by_name(patch):
    with pytest.raises(ValueError, match="patch"):
        SmallWorldConfig(patch=patch)


def test_patch1_dit_has_one_token_per_latent_cell(patch1):
    assert tuple(patch1.dit.patch_size) == (1, 1, 1)
    tokens = patch1.dit.patchify(torch.zeros(1, 48, 2, 4, 4))  # (B, D, F, h', w')
    assert tokens.shape[2:] == (2, 4, 4)
    assert patch1.height_division_factor == 16  # one latent cell: 16 pixels


def test_patch1_forward_without_actions_is_the_zero_action_path(patch1):
    """With no actions a patch-1 DiT runs the mirror (the stock forward assumes 2x2 patches); a controller whose
    scale is 0 must then change nothing, bit for bit."""
    silent = build_tiny_controller(0, injection_type="adaln_tmod", initial_scale=0.0)
    plain = _forward(patch1, None)
    assert plain.shape == (1, 48, 3, 4, 4)
    assert torch.equal(_forward(patch1, constant_actions(2, {"Forward": 0.01}), silent), plain)
    moved = _forward(patch1, constant_actions(2, {"Forward": 0.01}), patch1.action_controller)
    assert (moved - plain).abs().max() > 1e-4


def test_the_mirror_without_actions_equals_the_stock_forward(monkeypatch):
    """The no-action mirror is the stock forward, step for step (checked on a 2x2 DiT, forced through it)."""
    pipe = build_tiny_pipeline(seed=0)
    stock = _forward(pipe, None)
    monkeypatch.setattr(model_fn_module, "WAN_PATCH", None)
    assert torch.equal(_forward(pipe, None), stock)


def test_patch1_world_generates_chunks_and_streams(patch1, gen_kwargs, first_frame):
    video = patch1(actions=constant_actions(2, {"Yaw Left": 1.0}), **gen_kwargs)
    assert video.shape == (1, 3, 9, 64, 64)
    stream = patch1.open_stream(first_frame, PROMPT, seed=1, steps=1, window=2)
    assert stream.cache.tokens == 16  # a 4x4 latent grid, one token per cell (a 2x2 world: 4)
    for block in range(4):  # past the window: the ring buffer wraps
        frames = stream.step(constant_actions(1, {"Forward": 0.01}))
        assert frames.shape == (4 + (block == 0), 64, 64, 3)  # the first block also returns the first frame
    assert stream.latents.shape == (1, 48, 5, 4, 4)
    stream.close()
