"""Shared fixtures: the tiny random-weight preset (CPU) and a deterministic first frame."""
import numpy as np
import pytest
import torch
from PIL import Image

from models.action_format import MAGNITUDE_SCALE
from models.tiny import build_tiny_pipeline

torch.set_num_threads(2)


def _quiet(iterable):
    return iterable


@pytest.fixture(scope="session")
def tiny_pipe():
    """One tiny pipeline per test session; tests that attach a controller must detach it (use `pipe_with`)."""
    return build_tiny_pipeline(seed=0)


@pytest.fixture
def pipe_with(tiny_pipe):
    """Attach a controller to the shared tiny pipeline for one test, then detach it."""
    def attach(controller, **kwargs):
        tiny_pipe.set_action_controller(controller, **kwargs)
        return tiny_pipe
    yield attach
    tiny_pipe.set_action_controller(None)
    tiny_pipe.action_magnitude_scale = tuple(MAGNITUDE_SCALE)


@pytest.fixture(scope="session")
def first_frame():
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(64, 64, 3) * 255).astype(np.uint8))


@pytest.fixture
def gen_kwargs(first_frame):
    """A 64x64, 9-frame (2 action steps), 2-step generation with CFG, returning float video (B, 3, F, H, W)."""
    return dict(prompt="a drone flies over a green field", negative_prompt="blurry", input_image=first_frame,
                height=64, width=64, num_frames=9, num_inference_steps=2, seed=1, cfg_scale=5.0,
                output_type="floatpoint", tiled=False, progress_bar_cmd=_quiet)


@pytest.fixture
def forward_clip():
    """``forward_clip(pipe, height, width, frames, steps=1)`` -> a float video (1, 3, F, H, W) of a constant
    Forward flight from a fixed random first frame."""
    def generate(pipe, height, width, frames, steps=1):
        first = Image.fromarray(np.random.RandomState(0).randint(0, 255, (height, width, 3), dtype=np.uint8))
        actions = np.zeros(((frames - 1) // 4, 2, 8), dtype=np.float32)
        actions[:, :, 0] = (1.0, 0.01)  # Forward
        return pipe(prompt="a drone flies over a green meadow", input_image=first, height=height, width=width,
                    num_frames=frames, num_inference_steps=steps, seed=0, cfg_scale=1.0, actions=actions,
                    output_type="floatpoint", tiled=False, progress_bar_cmd=lambda it: it)
    return generate
