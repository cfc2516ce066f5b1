"""models.stream: a flight as one block-causal stream (tiny preset, CPU): frames, causality, decode, memory, errors."""
import numpy as np
import pytest
import torch

from models.action_format import constant_actions
from models.loading import build_pipeline
from models.media import video_to_frames

PROMPT = "a drone flies over a green field"


def flight(steps: int):
    names = ["Forward", "Yaw Left", "Pitch Up", "Right", "Back", "Yaw Right"]
    return [constant_actions(1, {names[i % len(names)]: 0.01 if i % 2 == 0 else 1.0}) for i in range(steps)]


@pytest.mark.parametrize("tiled", [False, True])
def test_streamed_frames_are_the_one_shot_decode_of_its_latents(pipe, first, tiled):
    stream = pipe.open_stream(first, PROMPT, seed=3, steps=2, window=2, block_frames=1, tiled=tiled)
    frames = [stream.step(actions) for actions in flight(4)]
    assert [len(f) for f in frames] == [5, 4, 4, 4]  # the first step also returns frame 0
    assert stream.latents.shape == (1, 48, 5, 4, 4)
    streamed = np.concatenate(frames)  # (17, H, W, 3)
    one_shot = video_to_frames(pipe.new_stream_decoder(tiled).push(stream.latents))  # all latents in one push
    assert np.array_equal(streamed, one_shot)
    stock = video_to_frames(pipe.vae.decode(stream.latents, device="cpu", tiled=tiled))
    assert np.abs(streamed.astype(int) - stock.astype(int)).max() <= 1  # one conv's rounding (models/streaming.py)


def test_changing_a_later_block_never_changes_earlier_frames(pipe, first):
    actions = flight(4)
    a = pipe.open_stream(first, PROMPT, seed=3, steps=2, window=2)
    b = pipe.open_stream(first, PROMPT, seed=3, steps=2, window=2)
    out_a = [a.step(x) for x in actions]
    out_b = [b.step(x) for x in actions[:2]] + [b.step(constant_actions(1, {"Pitch Down": 1.0}))]
    assert all(np.array_equal(x, y) for x, y in zip(out_a[:2], out_b[:2]))
    assert not np.array_equal(out_a[2], out_b[2])
    assert torch.equal(a.latents[:, :, :3], b.latents[:, :, :3])


def test_block_frames_and_step_iter_give_one_group_per_latent_frame(pipe, first):
    stream = pipe.open_stream(first, PROMPT, seed=0, steps=1, window=3, block_frames=2)
    groups = list(stream.step_iter(constant_actions(2, {"Forward": 0.01})))
    assert [len(g) for g in groups] == [1, 4, 4]
    partial = stream.step_iter(constant_actions(2, {"Yaw Left": 1.0}))
    next(partial)  # the caller stops early: the block's cache write happens at the next step
    assert stream.cache.frames == 3
    assert len(stream.step(constant_actions(2, {}))) == 8 and stream.cache.frames == 4
    assert stream.blocks == 3


def test_memory_stays_flat_over_a_long_flight(pipe, first):
    stream = pipe.open_stream(first, PROMPT, seed=0, steps=1, window=2, keep_latents=False)
    shapes = (stream.cache.k.data_ptr(), tuple(stream.cache.k.shape), stream.cache.nbytes)
    decoder_cache = None
    for actions in flight(12):
        stream.step(actions)
        sizes = [t.numel() for t in stream.decoder.tiles[0].cache if isinstance(t, torch.Tensor)]
        decoder_cache = decoder_cache or sizes
        assert sizes == decoder_cache  # the decoder's causal cache is constant after the first block
    assert (stream.cache.k.data_ptr(), tuple(stream.cache.k.shape), stream.cache.nbytes) == shapes
    assert stream.cache.frames == 3  # sink + window
    with pytest.raises(ValueError, match="keep_latents=False"):
        stream.latents


def test_action_guidance_runs_two_branches_and_changes_the_flight(pipe, first):
    plain = pipe.open_stream(first, PROMPT, seed=5, steps=2)
    guided = pipe.open_stream(first, PROMPT, seed=5, steps=2, action_guidance=3.0, action_guidance_rescale=0.7)
    assert (plain.branches, guided.branches) == (1, 2) and guided.cache.k.shape[1] == 2
    forward = constant_actions(1, {"Forward": 0.01})
    assert not np.array_equal(plain.step(forward), guided.step(forward))


@pytest.mark.parametrize("actions, message", [
    (np.zeros((2, 2, 8)), r"actions: expected shape \(1, 2, 8\)"),
    (np.zeros((1, 2, 7)), r"actions: expected shape"),
    (np.full((1, 2, 8), np.nan), "contains NaN or Inf"),
    (np.array([[[0.5] * 8, [0.0] * 8]]), "must be 0 or 1"),
    ("not json", "not valid JSON"),
])
def test_bad_actions_are_a_clear_value_error(pipe, first, actions, message):
    stream = pipe.open_stream(first, PROMPT, steps=1)
    with pytest.raises(ValueError, match=message):
        stream.step(actions)
    assert len(stream.step(constant_actions(1, {}))) == 5  # the stream is unharmed


def test_bad_streams_are_refused_by_name(pipe, first):
    stream = pipe.open_stream(first, PROMPT, steps=1)
    stream.close()
    with pytest.raises(ValueError, match="stream: it is closed"):
        stream.step(constant_actions(1, {}))
    for kwargs, message in (({"cfg_scale": 5.0}, "cfg_scale: a stream generates without text CFG"),
                            ({"window": -1}, "window must be an integer >= 0"),
                            ({"steps": 0}, "steps must be an integer >= 1"),
                            ({"action_guidance": 0.5}, "action_guidance must be a number >= 1"),
                            ({"height": 48}, "height must be a positive multiple of 32")):
        with pytest.raises(ValueError, match=message):
            pipe.open_stream(first, PROMPT, **kwargs)
    bare = build_pipeline(preset="tiny", controller=False)
    with pytest.raises(ValueError, match="needs an action controller"):
        bare.open_stream(first, PROMPT)
