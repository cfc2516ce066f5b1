"""training.evaluation.long_flight: the scripted flights, the window measures and drift, the truth of a held-out
scene, and both ways a world flies (tiny preset, CPU)."""
import argparse
import json
import os

import numpy as np
import pytest
import torch

from models.action_format import ACTION_NAMES
from models.loading import build_pipeline
from models.serve_config import ServeConfig
from training.data.synthetic import fly, held_out_start, held_out_view
from training.evaluation import long_flight as lf
from training.evaluation.long_flight_scores import window_bounds
from training.evaluation.rollout import psnr
from training.evaluation.suite import suite_magnitudes
from training.evaluation.vae_roundtrip import roundtrip

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
YAW = ACTION_NAMES.index("Yaw Right"), ACTION_NAMES.index("Yaw Left")
PITCH = ACTION_NAMES.index("Pitch Up"), ACTION_NAMES.index("Pitch Down")


@pytest.fixture(scope="module")
def toy_magnitudes():
    """What a held key sends in the toy world (its action_stats p90): ~0.07 per interval, ~9.2 degrees."""
    with open(os.path.join(REPO, "worlds", "toy", "action_train_config.json")) as handle:
        return suite_magnitudes(json.load(handle)["action_stats"])


def _signed(actions, positive, negative):
    amount = actions[:, 1] * (actions[:, 0] > 0)  # (T, 8)
    return amount[:, positive] - amount[:, negative]  # (T,)


def test_durations_are_whole_intervals_and_default_to_60_6_and_10_seconds():
    assert lf.steps_of(60, 8, "--seconds") == 120 and lf.steps_of(6, 24, "--window_seconds") == 36
    with pytest.raises(ValueError, match="--seconds: 1.3 s at 8 fps is 2.6 intervals"):
        lf.steps_of(1.3, 8, "--seconds")
    defaults = argparse.Namespace(seconds=None, window_seconds=None, edge_seconds=None)
    assert lf.flight_lengths(defaults, 8) == (120, 12, 20)  # 60 s, 6 s windows, 10 s edges at 8 fps
    assert lf.flight_lengths(argparse.Namespace(seconds=4, window_seconds=2, edge_seconds=None), 8) == (8, 4, 4)


def test_the_flight_script_repeats_a_balanced_round_and_stays_near_its_start(toy_magnitudes):
    even = np.array([0.07] * 4 + [9.0] * 4, np.float32)  # opposite actions alike: each round nets no turn at all
    actions = lf.flight_script(120, even, beat=1, key=[0, 0])  # 60 s at 8 fps
    assert actions.shape == (120, 2, 8)
    assert np.array_equal(actions, lf.flight_script(120, even, beat=1, key=[0, 0]))  # deterministic
    assert not np.array_equal(actions, lf.flight_script(120, even, beat=1, key=[0, 1]))  # another order
    for a, b in window_bounds(120, 12):  # every 6 s round: each action, the same mix, no net turn
        window = actions[a:b]
        assert window[:, 0].sum(0).tolist() == [2, 2, 1, 1, 2, 2, 1, 1]
        assert (window[:, 0].sum(1) == 0).sum() == 2  # the hover
        assert _signed(window, *YAW).sum() == pytest.approx(0.0, abs=1e-4)
        assert _signed(window, *PITCH).sum() == pytest.approx(0.0, abs=1e-4)
    assert np.abs(np.cumsum(_signed(actions, *PITCH))).max() <= 9.0 + 1e-4  # pitch within one beat of level
    assert lf.beat_steps(8) == 1 and lf.beat_steps(16) == 2 and lf.beat_steps(24) == 3
    assert lf.flight_script(24, even, beat=2)[:, 0].sum(0).tolist() == [4, 4, 2, 2, 4, 4, 2, 2]  # held twice as long
    toy = lf.flight_script(120, toy_magnitudes, key=[0, 0])  # the toy world's keys: Yaw Left 9.18, Right 9.10
    poses, flown = fly(toy, held_out_start(lf.SCENE_BASE))
    assert np.array_equal(flown.astype(np.float32), toy)  # nothing clamped: the script is what is flown
    assert np.hypot(*(poses[:, [0, 2], 3] - poses[:1, [0, 2], 3]).T).max() < 0.3  # a 60 s flight stays local


def test_out_and_back_flights_return_to_the_start_frame_in_the_renderer(toy_magnitudes):
    scripts = lf.out_and_back_scripts(toy_magnitudes)
    k = round(90 / toy_magnitudes[YAW[0]])  # 10 intervals of 9 degrees each way in the toy world
    assert [len(a) for a in scripts.values()] == [2 * k, 2 * k]
    assert _signed(scripts["yaw"][:k], *YAW).sum() == pytest.approx(90.0, abs=1e-4)
    assert _signed(scripts["yaw"], *YAW).sum() == pytest.approx(0.0, abs=1e-4)
    truth = lf.scene_truth(lf.SCENE_BASE, {"long": lf.flight_script(4, toy_magnitudes), **scripts}, 48, 48)
    firsts = [flight["frames"][0] for flight in truth["flights"].values()]
    assert all(np.array_equal(firsts[0], first) for first in firsts)  # one world, one start for every flight
    assert held_out_view(lf.SCENE_BASE, 48, 48)[1] == truth["prompt"]  # the held-out world of that seed
    for name in ("yaw", "forward"):
        video = truth["flights"][name]["frames"]  # (4 * 2k + 1, 48, 48, 3)
        assert len(video) == 8 * k + 1
        assert psnr(video[-1], video[0]) > 60  # back where it started
        assert psnr(video[4 * k], video[0]) < 25  # and far from it halfway
    assert truth["flights"]["forward"]["max_distance"] == pytest.approx(k * toy_magnitudes[0], rel=1e-3)


@pytest.fixture
def one_thread():
    """Generation on one torch thread: on 2 shared cores two threads are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("generation, block_frames", [("chunked", 1), ("causal", 1), ("causal", 2)])
def test_a_world_flies_as_it_is_served(generation, block_frames, one_thread):
    """4T+1 frames either way (9-frame chunks or 2-frame blocks: the last one is shorter or filled up), from the given
    first frame, deterministic per seed; a shorter flight is the longer one's beginning (the first chunk; a causal
    stream's first block)."""
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0})
    serve = ServeConfig(height=64, width=64, chunk_frames=9, steps=1, generation=generation, window=1,
                        block_frames=block_frames, action_guidance=2.0)
    first = held_out_view(lf.SCENE_BASE, 64, 64)[0]
    actions = lf.flight_script(3, suite_magnitudes(), key=0)
    video = lf.generate_flight(pipe, serve, first, "a field", actions, seed=1)
    assert video.shape == (13, 64, 64, 3) and video.dtype == np.uint8
    prefix = 2 if generation == "chunked" or block_frames == 2 else 1
    start = lf.generate_flight(pipe, serve, first, "a field", actions[:prefix], seed=1)
    assert np.array_equal(start, video[:4 * prefix + 1])
    assert np.abs(video[1:].astype(int) - video[:-1]).mean() > 0  # it moves


def test_the_vae_ceiling_decodes_as_the_world_decodes(one_thread):
    """Chunked: every chunk through the VAE on its own, from the previous chunk's last true frame; causal: the whole
    flight in one encode and decode."""
    pipe = build_pipeline(preset="tiny")
    truth = lf.scene_truth(lf.SCENE_BASE, {"long": lf.flight_script(3, suite_magnitudes())}, 64, 64)
    frames = truth["flights"]["long"]["frames"]  # (13, 64, 64, 3)
    chunked = lf.vae_ceiling(pipe, ServeConfig(height=64, width=64, chunk_frames=9), frames)
    causal = lf.vae_ceiling(pipe, ServeConfig(height=64, width=64, generation="causal"), frames)
    assert chunked.shape == causal.shape == frames.shape and chunked.dtype == np.uint8
    assert np.array_equal(chunked[:9], roundtrip(pipe.vae, frames[:9]))  # the first 9-frame chunk
    assert np.array_equal(chunked[9:], roundtrip(pipe.vae, frames[8:])[1:])  # the last, shorter chunk
    assert np.array_equal(causal, roundtrip(pipe.vae, frames))
    assert not np.array_equal(chunked[9:], causal[9:])
