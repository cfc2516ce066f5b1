"""training.evaluation.metrics: the action-following scores, their chance level and magnitudes."""
import numpy as np
import pytest

from models.action_format import constant_actions
from training.evaluation.metrics import active_flags, score_intervals


def actions_of(*steps):
    return np.concatenate([constant_actions(1, step).numpy() for step in steps]).astype(np.float64)


COMMANDED = actions_of({"Forward": 0.01}, {"Forward": 0.01}, {"Yaw Left": 1.0}, {}, {"Left": 0.01},
                       {"Forward": 0.01, "Yaw Right": 1.0})


ESTIMATED = actions_of({"Forward": 0.01}, {"Back": 0.01}, {"Left": 0.01}, {"Yaw Left": 1.0}, {"Left": 0.01},
                       {"Forward": 0.01})


def test_score_intervals_numbers():
    m = score_intervals(ESTIMATED, COMMANDED)
    f, left, yaw_left, yaw_right = (m["per_action"][n] for n in ("Forward", "Left", "Yaw Left", "Yaw Right"))
    assert (f["precision"], f["recall"], f["f1"]) == (1.0, pytest.approx(2 / 3), pytest.approx(0.8))
    assert (left["precision"], left["recall"], left["balanced_accuracy"]) == (0.5, 1.0, pytest.approx(0.9))
    assert (yaw_left["f1"], yaw_left["balanced_accuracy"]) == (0.0, pytest.approx(0.4))
    assert yaw_right["precision"] is None and yaw_right["recall"] == 0.0 and yaw_right["balanced_accuracy"] == 0.5
    assert m["per_action"]["Back"]["recall"] is None and m["per_action"]["Back"]["f1"] == 0.0  # never commanded
    assert m["accuracy"] == pytest.approx((5 / 6 + 0.9 + 0.4 + 0.5) / 4)
    assert m["unscored_actions"] == ["Back", "Right", "Pitch Up", "Pitch Down"]
    assert m["exact_match"] == pytest.approx(2 / 6) and m["exact_match_chance"] == pytest.approx(7 / 36)
    assert m["kappa"] == pytest.approx((2 / 6 - 7 / 36) / (1 - 7 / 36))
    counts, idx = np.array(m["confusion"]["counts"]), {n: i for i, n in enumerate(m["confusion"]["labels"])}
    expected = {("Forward", "Forward"): 2, ("Forward", "Back"): 1, ("Yaw Left", "Left"): 1, ("none", "Yaw Left"): 1,
                ("Left", "Left"): 1, ("Yaw Right", "none"): 1}
    for (row, col), value in expected.items():
        assert counts[idx[row], idx[col]] == value
    assert counts.sum() == sum(expected.values())
    rates = m["confusion_rates"]
    assert rates["forward_back"] == pytest.approx(1 / 3) and rates["yaw_strafe"] == pytest.approx(1 / 3)
    assert rates["left_right"] == 0.0 and rates["pitch_up_down"] is None
    assert m["magnitude"] is None and m["intervals"] == 6


def test_chance_and_magnitudes():
    hover = np.zeros_like(COMMANDED)
    assert score_intervals(hover, COMMANDED)["accuracy"] == 0.5  # ignoring the actions scores exactly chance
    perfect = score_intervals(COMMANDED, COMMANDED)
    assert perfect["accuracy"] == 1.0 and perfect["exact_match"] == 1.0 and perfect["kappa"] == 1.0
    amounts = {"forward": [0.01, 0.01, 0, 0, 0, 0.01], "right": [0, 0, 0, 0, -0.01, 0], "yaw": [0, 0, -1, 0, 0, 1],
               "pitch": [0.0] * 6}
    motion = {k: 2 * np.array(v) for k, v in amounts.items()}  # twice the commanded amounts
    mag = score_intervals(COMMANDED, COMMANDED, motion)["magnitude"]
    assert mag["axes"]["forward"]["pearson"] == pytest.approx(1.0) and mag["axes"]["yaw"]["gain"] == pytest.approx(2)
    assert mag["axes"]["pitch"]["pearson"] is None  # never commanded: undefined, not 0
    both = actions_of({"Forward": 0.01, "Back": 0.01})
    assert not active_flags(both).any()  # opposite actions held together cancel
    with pytest.raises(ValueError, match="differ in shape"):
        score_intervals(COMMANDED[:3], COMMANDED)
