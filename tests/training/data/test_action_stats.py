"""training.data.action_stats: per-action statistics of raw actions."""
import numpy as np

from models.action_format import ACTION_NAMES
from training.data.action_stats import compute_action_stats

IDX = {name: i for i, name in enumerate(ACTION_NAMES)}


def test_action_stats_numbers(tmp_path):
    clips = np.zeros((2, 5, 2, 8))
    clips[:, :, :, IDX["Forward"]] = [1.0, 0.01]
    clips[0, :2, :, IDX["Yaw Left"]] = [[1.0, 1.0], [1.0, 3.0]]
    stats = compute_action_stats(clips)
    assert (stats["num_clips"], stats["num_intervals"]) == (2, 10)
    forward, yaw = stats["actions"]["Forward"], stats["actions"]["Yaw Left"]
    assert forward["count"] == 10 and forward["fraction_active"] == 1.0 and np.isclose(forward["mean"], 0.01)
    assert yaw["count"] == 2 and yaw["fraction_active"] == 0.2 and yaw["mean"] == 2.0 and yaw["std"] == 1.0
    assert yaw["p50"] == 2.0 and stats["actions"]["Back"]["mean"] is None
