"""models.causal: the block-causal mask, causality of the training forward, and the stream's exactness against it."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from models.action_format import constant_actions, split_actions
from models.causal import compile_stream, forward_block, frame_mask, model_fn_causal
from models.loading import build_pipeline
from models.options import CausalSettings

PROMPT = "a drone flies over a green field"
ACTIONS = [constant_actions(1, {"Forward": 0.01}), constant_actions(1, {"Yaw Left": 1.0}),
           constant_actions(1, {"Back": 0.01}), constant_actions(1, {"Pitch Up": 1.0}),
           constant_actions(1, {"Left": 0.02})]


def image():
    return Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))


def prompt_context(pipe):
    unit = next(u for u in pipe.units if type(u).__name__ == "CachedPromptEmbedder")
    return unit.process(pipe, PROMPT, True)["context"]  # (1, S, D_text)


def test_frame_mask_is_blocks_plus_window_plus_sink():
    expected = torch.tensor([  # frame 0 = the first image; blocks of 2; window 1
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 0, 1, 1, 1, 0, 0],  # the sink, the one frame before the block, the block
        [1, 0, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(frame_mask(7, CausalSettings(block_frames=2, window=1, sink=True)), expected)
    no_sink = frame_mask(7, CausalSettings(block_frames=2, window=1, sink=False))
    assert not no_sink[3, 0] and no_sink[1, 0]  # frame 0 is then only context while it is in the window


@pytest.mark.parametrize("field, value, message", [("block_frames", 0, "block_frames must be an integer >= 1"),
                                                   ("window", -1, "window must be an integer >= 0"),
                                                   ("sink", 1, "sink must be true or false")])
def test_settings_are_checked_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        CausalSettings(**{field: value})
    with pytest.raises(ValueError, match="window must be >= 1 without a sink"):
        CausalSettings(window=0, sink=False)


def test_a_later_frame_never_changes_an_earlier_prediction():
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0})
    settings = CausalSettings(block_frames=1, window=2)
    latents = torch.randn(1, 48, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([[0.0, 300.0, 500.0, 700.0, 900.0]])
    binary, magnitude = split_actions(torch.cat(ACTIONS[:4])[None])  # (1, 4, 8)
    context = prompt_context(pipe)
    with torch.no_grad():
        base = model_fn_causal(pipe.dit, pipe.action_controller, latents, timesteps, context, settings, binary,
                               magnitude)
        later = latents.clone()
        later[:, :, 3:] = torch.randn(1, 48, 2, 4, 4)
        binary[:, 3:], magnitude[:, 3:] = 1 - binary[:, 3:], magnitude[:, 3:] + 5
        changed = model_fn_causal(pipe.dit, pipe.action_controller, later, timesteps, context, settings, binary,
                                  magnitude)
    assert torch.equal(base[:, :, :3], changed[:, :, :3])
    assert not torch.allclose(base[:, :, 3:], changed[:, :, 3:])


def two_blocks_then_noise(pipe, block_frames: int):
    """A stream (window 8) after two blocks, the third block's actions and noise: (stream, every step's raw actions
    (1, T, 2, 8), the third block's action tokens, noise (1, C, b, h, w), the first timestep)."""
    stream = pipe.open_stream(image(), PROMPT, seed=1, steps=2, window=8, block_frames=block_frames)
    done = [constant_actions(block_frames, {"Forward": 0.01}), constant_actions(block_frames, {"Yaw Left": 1.0})]
    for actions in done:
        stream.step(actions)
    following = constant_actions(block_frames, {"Pitch Up": 1.0, "Right": 0.02})
    action_emb = stream._action_emb(*split_actions(torch.cat([stream.history, following[None]], dim=1)))
    noise = pipe.generate_noise((1, 48, block_frames, 4, 4), seed=123)
    return stream, torch.cat(done + [following])[None], action_emb, noise, float(stream.scheduler.timesteps[0])


def whole_clip(pipe, stream, steps, noise, timestep: float, block_frames: int, **kwargs) -> torch.Tensor:
    """The same frames through the block-causal training forward: its last block's prediction (1, C, b, h, w)."""
    latents = torch.cat([stream.latents, noise], dim=2)  # (1, C, F, h, w)
    timesteps = torch.zeros(1, latents.shape[2])
    timesteps[0, -block_frames:] = timestep
    whole = model_fn_causal(pipe.dit, pipe.action_controller, latents, timesteps, prompt_context(pipe),
                            CausalSettings(block_frames, 8, True), *split_actions(steps), **kwargs)
    return whole[:, :, -block_frames:]


@pytest.mark.parametrize("injection_type", ["cross_attn_frame", "cross_attn_window", "adaln_tmod", "add_residual"])
@pytest.mark.parametrize("block_frames", [1, 2])
def test_the_stream_predicts_what_the_training_forward_predicts(injection_type, block_frames):
    """A block denoised against the cache = the same frames through the block-causal mask in one forward."""
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0, "injection_type": injection_type})
    stream, steps, action_emb, noise, timestep = two_blocks_then_noise(pipe, block_frames)
    with torch.no_grad():
        streamed = forward_block(pipe.dit, pipe.action_controller, noise, timestep, stream.context, stream.cache,
                                 action_emb)  # (1, C, b, h, w)
        whole = whole_clip(pipe, stream, steps, noise, timestep, block_frames)
    assert (whole - streamed).abs().max() < 1e-5 < streamed.abs().mean()


def test_a_rolled_window_still_predicts_what_the_training_forward_predicts():
    """Without a sink, positions are relative to the window in both paths: after the window rolled (4 blocks
    through a 2-frame window) the cached keys and values are still the right frames in the right order."""
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0, "injection_type": "adaln_tmod"})
    stream = pipe.open_stream(image(), PROMPT, seed=1, steps=2, window=2, sink=False)
    for actions in ACTIONS:
        stream.step(actions)
    assert stream.cache.frames == 2
    following = constant_actions(1, {"Right": 0.02})
    noise = pipe.generate_noise((1, 48, 1, 4, 4), seed=123)
    timestep = float(stream.scheduler.timesteps[0])
    with torch.no_grad():
        streamed = forward_block(pipe.dit, pipe.action_controller, noise, timestep, stream.context, stream.cache,
                                 stream._action_emb(*split_actions(following[None])))
        latents = torch.cat([stream.latents, noise], dim=2)
        timesteps = torch.zeros(1, latents.shape[2])
        timesteps[0, -1] = timestep
        binary, magnitude = split_actions(torch.cat(ACTIONS + [following])[None])
        whole = model_fn_causal(pipe.dit, pipe.action_controller, latents, timesteps, prompt_context(pipe),
                                CausalSettings(1, 2, False), binary, magnitude)
    assert (whole[:, :, -1:] - streamed).abs().max() < 1e-5


def fly(pipe, actions=ACTIONS):
    """A flight through a 2-frame window (it fills, then rolls): every latent frame and every decoded frame."""
    stream = pipe.open_stream(image(), PROMPT, seed=2, steps=2, window=2)
    frames = [stream.step(a) for a in actions]
    return stream.latents, np.concatenate(frames)


def test_compile_stream_compiles_one_graph_per_block_shape_and_never_recompiles():
    """All layers, the sink pass and every block share one graph per part while the window fills and rolls (the
    cached context's length never reaches the compiled parts); the graphs compute what the eager path does."""
    from torch._dynamo.testing import CompileCounter
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0})
    eager = fly(pipe)
    counters = CompileCounter()
    compile_stream(pipe.dit, backend=counters)
    compiled = fly(pipe)
    assert counters.frame_count == 2  # attention_inputs and block_output, once each, for 2 layers x 11 passes
    assert torch.equal(compiled[0], eager[0]) and np.array_equal(compiled[1], eager[1])
    compile_stream(pipe.dit, mode=None)  # eager again: no graph is run
    fly(pipe, ACTIONS[:1])
    assert counters.frame_count == 2 and not hasattr(pipe.dit, "_stream_compiled_parts")
    with pytest.raises(ValueError, match="mode: expected one of default"):
        compile_stream(pipe.dit, mode="fast")


@pytest.mark.skipif(not os.environ.get("WANFLY_SLOW_TESTS"), reason="torch.compile (inductor) of the stream takes "
                    "~35 s on 2 CPU cores; set WANFLY_SLOW_TESTS=1 to run it")
def test_compiled_stream_matches_eager():
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0})
    eager = fly(pipe)
    compile_stream(pipe.dit)
    compiled = fly(pipe)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)  # measured: max |diff| 4.8e-7
    assert np.abs(compiled[1].astype(int) - eager[1].astype(int)).max() <= 1  # uint8 frames: rounding at most
    with torch._dynamo.config.patch(error_on_recompile=True):  # compiled once: a new flight reuses the graphs
        fly(pipe, ACTIONS[:3])


def lookahead_pipe():
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0, "injection_type": "adaln_tmod",
                                                                "lookahead": True})
    torch.nn.init.normal_(pipe.action_controller.ahead_to_tmod.weight, std=0.05)  # zero at init: make it matter
    return pipe


@pytest.mark.parametrize("block_frames", [1, 2])
def test_a_lookahead_stream_predicts_what_the_training_forward_predicts(block_frames):
    """The cache holds each frame as the clip's forward computes it with its next action (the sink's: the first
    block's first action), written once those actions are known."""
    pipe = lookahead_pipe()
    stream = pipe.open_stream(image(), PROMPT, seed=1, steps=2, window=8, block_frames=block_frames)
    assert stream.cache.frames == 0  # the sink waits for the first actions
    done = [torch.cat([constant_actions(1, {"Forward": 0.01}), constant_actions(block_frames - 1, {"Left": 0.02})]),
            constant_actions(block_frames, {"Yaw Left": 1.0})]
    for actions in done:
        stream.step(actions)
    assert stream.cache.frames == 1 + block_frames  # the last block waits for the next block's actions
    following = constant_actions(block_frames, {"Pitch Up": 1.0, "Right": 0.02})
    stream._commit(following[None])
    noise = pipe.generate_noise((1, 48, block_frames, 4, 4), seed=123)
    timestep = float(stream.scheduler.timesteps[0])
    binary, magnitude = split_actions(torch.cat(done + [following])[None])  # (1, T, 8) each
    none = torch.zeros(1, 1, 8)  # the last frame has no next action
    frames = binary.shape[1] + 1
    present = torch.arange(frames)[None] < frames - block_frames  # (1, F): context frames only
    ahead = (torch.cat([binary, none], 1), torch.cat([magnitude, none], 1), present)
    with torch.no_grad():
        streamed = forward_block(pipe.dit, pipe.action_controller, noise, timestep, stream.context, stream.cache,
                                 stream._action_emb(*split_actions(following[None])))  # (1, C, b, h, w)
        latents = torch.cat([stream.latents, noise], dim=2)  # (1, C, F, h, w)
        timesteps = torch.zeros(1, frames)
        timesteps[0, -block_frames:] = timestep
        settings = CausalSettings(block_frames, 8, True)
        context = prompt_context(pipe)
        whole = model_fn_causal(pipe.dit, pipe.action_controller, latents, timesteps, context, settings, binary,
                                magnitude, ahead=ahead)
        blind = model_fn_causal(pipe.dit, pipe.action_controller, latents, timesteps, context, settings, binary,
                                magnitude)
    assert (whole[:, :, -block_frames:] - streamed).abs().max() < 1e-5
    assert (blind[:, :, -block_frames:] - streamed).abs().max() > 1e-3  # the lookahead reached the block


def test_lookahead_never_changes_frames_already_made():
    """A block's actions now reach the cache entries of the frames before it, never those frames."""
    pipe = lookahead_pipe()
    a = pipe.open_stream(image(), PROMPT, seed=3, steps=2, window=2)
    b = pipe.open_stream(image(), PROMPT, seed=3, steps=2, window=2)
    out_a = [a.step(x) for x in ACTIONS[:3]]
    out_b = [b.step(x) for x in ACTIONS[:2]] + [b.step(constant_actions(1, {"Pitch Down": 1.0}))]
    assert all(np.array_equal(x, y) for x, y in zip(out_a[:2], out_b[:2]))
    assert not np.array_equal(out_a[2], out_b[2])


@pytest.mark.parametrize("injection_type, block_frames, spatial", [("adaln_tmod", 1, False),
                                                                   ("cross_attn_window", 2, False),
                                                                   ("adaln_tmod", 2, True)])
def test_a_joint_previous_stream_predicts_what_the_training_forward_predicts(injection_type, block_frames, spatial):
    """A block denoised with a copy of the frame before it = the clip's forward with that copy (joint_previous);
    with spatial_tmod (its field made non-zero) too."""
    overrides = {"initial_scale": 1.0, "injection_type": injection_type, "joint_previous": True,
                 "spatial_tmod": spatial}
    pipe = build_pipeline(preset="tiny", controller_overrides=overrides)
    if spatial:
        with torch.no_grad():
            pipe.action_controller.action_to_spatial_tmod.weight.normal_(std=0.05)
    stream, steps, action_emb, noise, timestep = two_blocks_then_noise(pipe, block_frames)
    with torch.no_grad():
        streamed = forward_block(pipe.dit, pipe.action_controller, noise, timestep, stream.context, stream.cache,
                                 action_emb, previous=stream.latents[:, :, -1:])
        alone = forward_block(pipe.dit, pipe.action_controller, noise, timestep, stream.context, stream.cache,
                              action_emb)
        whole = whole_clip(pipe, stream, steps, noise, timestep, block_frames)
    assert (whole - streamed).abs().max() < 1e-5
    assert (alone - streamed).abs().max() > 1e-3  # the copy changed the block


def test_joint_previous_needs_a_window_and_keeps_earlier_frames_fixed():
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0, "joint_previous": True})
    with pytest.raises(ValueError, match="window must be >= 1"):
        pipe.open_stream(image(), PROMPT, window=0)
    with pytest.raises(ValueError, match="joint_previous needs window >= 1"):  # the training forward too
        model_fn_causal(pipe.dit, pipe.action_controller, torch.zeros(1, 48, 2, 4, 4), torch.zeros(1, 2),
                        prompt_context(pipe), CausalSettings(1, 0, True))
    a = pipe.open_stream(image(), PROMPT, seed=3, steps=2, window=2)
    b = pipe.open_stream(image(), PROMPT, seed=3, steps=2, window=2)
    out_a = [a.step(x) for x in ACTIONS]
    out_b = [b.step(x) for x in ACTIONS[:3]] + [b.step(constant_actions(1, {"Pitch Down": 1.0}))]
    assert all(np.array_equal(x, y) for x, y in zip(out_a[:3], out_b[:3]))
    assert not np.array_equal(out_a[3], out_b[3])
    assert a.cache.frames == 3  # the copies never enter the cache: sink + window
    with pytest.raises(ValueError, match="the clean pass that writes the cache runs without the previous frame"):
        forward_block(pipe.dit, pipe.action_controller, a.latents[:, :, -1:], 0.0, a.context, a.cache, write=True,
                      previous=a.latents[:, :, -1:])
    blind = pipe.open_stream(image(), PROMPT, seed=3, steps=2, window=2)
    blind.joint = False  # the same weights without the copy: the stream really denoises with it
    assert not np.array_equal(blind.step(ACTIONS[0]), out_a[0])
