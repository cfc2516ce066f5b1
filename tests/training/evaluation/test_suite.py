"""training.evaluation.suite: the commanded suite flights."""
import numpy as np

from models.action_format import ACTION_NAMES
from training.evaluation.report import entry_labels
from training.evaluation.suite import SUITE, SUITE_MOVE, SUITE_TURN, suite_actions, suite_magnitudes


def test_suite_flights():
    assert len(SUITE) == 14  # 8 single actions, 3 combos, hover, 2 alternating
    assert suite_actions("forward+yaw_left", 2)[:, 0].sum() == 4
    alternate = suite_actions("alternate_yaw", 4)
    assert [ACTION_NAMES[i] for i in alternate[:, 0].argmax(1)] == ["Yaw Left", "Yaw Right"] * 2
    assert not suite_actions("hover", 3).any()
    stats = {"actions": {"Forward": {"p90": 0.05}, "Yaw Left": {"p90": 8.0}}}
    magnitudes = suite_magnitudes(stats)  # what a held key sends in the server; defaults where unknown
    assert magnitudes[0] == np.float32(0.05) and magnitudes[4] == np.float32(8.0)
    assert magnitudes[1] == np.float32(SUITE_MOVE) and magnitudes[5] == np.float32(SUITE_TURN)
    assert suite_actions("forward+yaw_left", 1, magnitudes)[0, 1, [0, 4]].tolist() == [magnitudes[0], 8.0]
    assert entry_labels(["base"], ["x", "ctrl", "ctrl"]) == ["base", "ctrl", "ctrl-2"]  # labels name output folders
