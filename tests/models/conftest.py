"""Fixtures shared by the stream tests (models.stream, models.frames): the tiny preset with a live controller and
one 64x64 first image. A test module may define its own ``pipe`` (e.g. with a small decoder attached)."""
import numpy as np
import pytest
from PIL import Image

from models.loading import build_pipeline


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0})


@pytest.fixture(scope="module")
def first():
    return Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
