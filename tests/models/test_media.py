"""models.media: mp4 writing and reading, probing, centre crop + resize."""
import numpy as np

from models.media import read_video, write_mp4
from training.data.synthetic import (
    random_actions,
    render_clip,
)


def test_mp4_round_trip_is_high_quality(tmp_path):
    video, _ = render_clip(random_actions(2, np.random.default_rng(1)), 64, 64, 9, seed=2)
    write_mp4(tmp_path / "a.mp4", video, fps=24)
    decoded = read_video(tmp_path / "a.mp4")
    assert decoded.shape == video.shape
    assert np.abs(decoded.astype(int) - video).mean() < 4.0
