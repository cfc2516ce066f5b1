"""server.generation.generators: an autoregressive world makes long videos chunk by chunk, like a flight."""
import dataclasses

import numpy as np
import torch
from PIL import Image

from server.generation.generators import GenRequest, PipelineGenerator


class StubPipe:
    """Records each call; returns frames whose value is the call number (in [-1, 1] pixels)."""

    def __init__(self):
        self.calls = []
        self.action_controller = object()  # the world has a controller: actions are passed on

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        value = len(self.calls) / 10.0
        return torch.full((1, 3, kwargs["num_frames"], kwargs["height"], kwargs["width"]), value)  # (1, 3, F, H, W)


def request(num_frames, actions):
    return GenRequest(prompt="p", image=Image.new("RGB", (64, 64), (1, 2, 3)), actions=actions,
                      num_frames=num_frames, steps=1, seed=7, cfg_scale=1.0)


def test_autoregressive_world_generates_long_videos_chunk_by_chunk(random_world):
    stub = StubPipe()
    world = dataclasses.replace(random_world, pipe=stub, chunk_frames=5, autoregressive=True)
    actions = np.arange(3 * 2 * 8, dtype=np.float64).reshape(3, 2, 8)  # (T, 2, 8), T = 3 intervals
    frames = PipelineGenerator(world).generate(request(13, actions))
    assert frames.shape == (13, 64, 64, 3)  # 5 + 4 + 4: each later chunk drops its repeated first frame
    assert [call["num_frames"] for call in stub.calls] == [5, 5, 5]
    assert [call["seed"] for call in stub.calls] == [7, 8, 9]
    for k, call in enumerate(stub.calls):
        assert np.array_equal(call["actions"].numpy(), actions[k:k + 1])  # interval k drives chunk k
    first_of_chunk_two = np.asarray(stub.calls[1]["input_image"])
    assert np.array_equal(first_of_chunk_two, frames[4])  # chunk 2 starts from chunk 1's last frame
    assert len(set(frames[:5, 0, 0, 0])) == 1 and frames[5, 0, 0, 0] != frames[4, 0, 0, 0]


def test_other_worlds_generate_in_one_call(random_world):
    stub = StubPipe()
    world = dataclasses.replace(random_world, pipe=stub, chunk_frames=5, autoregressive=False)
    frames = PipelineGenerator(world).generate(request(13, np.zeros((3, 2, 8))))
    assert frames.shape[0] == 13 and [call["num_frames"] for call in stub.calls] == [13]
