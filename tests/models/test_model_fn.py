"""model_fn_wan_action's action guidance (and its rescale), directly and through the pipeline (tiny preset, CPU)."""
import math

import pytest
import torch

from models.action_format import constant_actions, split_actions
from models.model_fn import model_fn_wan_action
from models.tiny import build_tiny_controller

ACTIONS = constant_actions(2, {"Forward": 0.01, "Yaw Left": 1.0})  # (2, 2, 8) for 9 frames


def _inputs(seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 48, 3, 4, 4, generator=g)  # (B, C, F, h, w): 9 frames at 64x64
    context = torch.randn(batch, 6, 32, generator=g)  # (B, S_text, text_dim)
    binary, magnitude = split_actions(ACTIONS)  # (1, T, 8) each
    return latents, context, binary, magnitude


def _call(pipe, latents, context, binary, magnitude, **kwargs):
    return model_fn_wan_action(dit=pipe.dit, action_controller=pipe.action_controller, latents=latents,
                               timestep=torch.tensor([700.0]), context=context, action_binary=binary,
                               action_magnitude=magnitude, fuse_vae_embedding_in_latents=True, **kwargs)


@pytest.mark.parametrize("batch", [1, 2])
def test_guidance_is_hover_plus_g_times_the_action_change(pipe_with, batch):
    pipe = pipe_with(build_tiny_controller(0, injection_type="adaln_tmod", initial_scale=1.0))
    latents, context, binary, magnitude = _inputs(batch=batch)
    commanded = _call(pipe, latents, context, binary, magnitude)  # (B, C, F, h, w)
    hover = _call(pipe, latents, context, torch.zeros_like(binary), torch.zeros_like(magnitude))
    assert (commanded - hover).abs().max() > 1e-3  # the actions change the prediction
    assert torch.equal(_call(pipe, latents, context, binary, magnitude, action_guidance=1.0), commanded)
    guided = _call(pipe, latents, context, binary, magnitude, action_guidance=3.0)
    assert guided.shape == commanded.shape
    assert torch.allclose(guided, hover + 3.0 * (commanded - hover), atol=1e-5)


def test_guidance_through_the_pipeline(pipe_with, gen_kwargs):
    pipe = pipe_with(build_tiny_controller(0, injection_type="adaln_tmod", initial_scale=1.0))
    plain = pipe(actions=ACTIONS, **gen_kwargs)
    assert torch.equal(pipe(actions=ACTIONS, action_guidance=1, **gen_kwargs), plain)
    guided = pipe(actions=ACTIONS, action_guidance=2.5, **gen_kwargs)
    assert torch.equal(guided[:, :, 0], plain[:, :, 0])  # the first frame stays the input image
    assert (guided[:, :, 1:] - plain[:, :, 1:]).abs().max() > 1e-3
    merged = pipe(actions=ACTIONS, action_guidance=2.5, cfg_merge=True, **gen_kwargs)
    assert (merged - guided).abs().max() < 1e-4  # cfg_merge batches both prompts; guidance still applies to each


@pytest.mark.parametrize("value", [0.5, 0, -1, math.nan, math.inf, True, "2"])
def test_bad_guidance_is_refused_by_name(pipe_with, gen_kwargs, value):
    pipe = pipe_with(build_tiny_controller(0))
    with pytest.raises(ValueError, match="action_guidance"):
        pipe(actions=ACTIONS, action_guidance=value, **gen_kwargs)


def test_guidance_without_actions_is_refused(pipe_with, gen_kwargs):
    pipe = pipe_with(build_tiny_controller(0))
    with pytest.raises(ValueError, match="action_guidance needs actions"):
        pipe(action_guidance=2.0, **gen_kwargs)


@pytest.mark.parametrize("batch", [1, 2])
def test_rescale_pulls_each_clip_back_to_the_commanded_std(pipe_with, batch):
    pipe = pipe_with(build_tiny_controller(0, injection_type="adaln_tmod", initial_scale=1.0))
    latents, context, binary, magnitude = _inputs(batch=batch)
    commanded = _call(pipe, latents, context, binary, magnitude)  # (B, C, F, h, w)
    guided = _call(pipe, latents, context, binary, magnitude, action_guidance=3.0)
    assert torch.equal(_call(pipe, latents, context, binary, magnitude, action_guidance=3.0,
                             action_guidance_rescale=0.0), guided)
    full = _call(pipe, latents, context, binary, magnitude, action_guidance=3.0, action_guidance_rescale=1.0)
    generated = (slice(None), slice(None), slice(1, None))  # frame 0 is the fused clean image: not counted
    for b in range(batch):
        assert torch.allclose(full[b][generated[1:]].std(), commanded[b][generated[1:]].std(), rtol=1e-4)
    assert (full - guided).abs().max() > 1e-5  # guidance moved the std, so the rescale moves the prediction
    half = _call(pipe, latents, context, binary, magnitude, action_guidance=3.0, action_guidance_rescale=0.5)
    assert torch.allclose(half, 0.5 * (full + guided), atol=1e-5)  # a linear blend of the two


def test_rescale_through_the_pipeline(pipe_with, gen_kwargs):
    pipe = pipe_with(build_tiny_controller(0, injection_type="adaln_tmod", initial_scale=1.0))
    guided = pipe(actions=ACTIONS, action_guidance=2.5, **gen_kwargs)
    assert torch.equal(pipe(actions=ACTIONS, action_guidance=2.5, action_guidance_rescale=0, **gen_kwargs), guided)
    rescaled = pipe(actions=ACTIONS, action_guidance=2.5, action_guidance_rescale=0.7, **gen_kwargs)
    assert torch.equal(rescaled[:, :, 0], guided[:, :, 0])
    assert (rescaled[:, :, 1:] - guided[:, :, 1:]).abs().max() > 1e-5  # small: random weights barely guide


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, True, "0.5"])
def test_bad_rescale_is_refused_by_name(pipe_with, gen_kwargs, value):
    pipe = pipe_with(build_tiny_controller(0))
    with pytest.raises(ValueError, match="action_guidance_rescale must be a number in"):
        pipe(actions=ACTIONS, action_guidance=2.0, action_guidance_rescale=value, **gen_kwargs)
