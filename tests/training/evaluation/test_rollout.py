"""training.evaluation.rollout: the drift measures and the chunk-after-chunk flight (CPU)."""
import os

import numpy as np
import pytest
from PIL import Image

from training.evaluation import rollout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class BrighterEachChunk:
    """A stand-in pipeline: every frame of a chunk is its first image + 10, and it records each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, input_image, num_frames, actions, seed, **kwargs):
        self.calls.append({"seed": seed, "steps": len(actions), "first": np.asarray(input_image)})
        brighter = Image.fromarray(np.clip(np.asarray(input_image).astype(np.int64) + 10, 0, 255).astype(np.uint8))
        return [brighter] * num_frames


def test_palette_distance_is_zero_for_the_same_colours_and_one_for_disjoint_ones():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert rollout.palette_distance(frame, frame[::-1, ::-1]) == 0.0  # same colours, other places
    assert rollout.palette_distance(np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)) == 1.0
    half = np.zeros((4, 4, 3), np.uint8)
    half[:2] = 255
    assert rollout.palette_distance(half, np.zeros((4, 4, 3), np.uint8)) == pytest.approx(0.5)
    assert rollout.psnr(frame, frame) > 90


def test_each_chunk_starts_from_the_previous_chunks_last_frame():
    pipe, first = BrighterEachChunk(), np.full((8, 8, 3), 100, np.uint8)
    actions = np.zeros((3, 2, 8), np.float32)
    lasts = rollout.rollout(pipe, first, "a field", actions, chunk_frames=5, steps=2, seed=7)
    assert [int(frame[0, 0, 0]) for frame in lasts] == [110, 120, 130]
    assert [int(call["first"][0, 0, 0]) for call in pipe.calls] == [100, 110, 120]
    assert [call["seed"] for call in pipe.calls] == [7, 8, 9] and all(c["steps"] == 1 for c in pipe.calls)
