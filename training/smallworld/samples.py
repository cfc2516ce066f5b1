"""The demo's bundled first frames (``python -m training.toyworld_samples --world DIR --out web/samples``).

``synthetic-1.png`` .. ``synthetic-3.png`` at the world's resolution (its ``serve.json``): held-out scenes of the
synthetic dataset (seeds far from the training clips) seen from their start pose. Committed as images, so the
server never renders at start; the toy-world recipe names one of them, with its prompt, in the world's
``serve.json``.
"""
from __future__ import annotations

import numpy as np

from training.data.synthetic import held_out_view

SAMPLE_SEED_BASE = 7_000_100  # web/samples/synthetic-{index + 1}.png
SAMPLES = 3


def sample_scene(index: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """(first frame uint8, prompt) of bundled sample ``synthetic-{index + 1}``."""
    return held_out_view(SAMPLE_SEED_BASE + index, height, width)
