import json

import numpy as np
import pytest
import torch

from models.action_format import (
    ACTION_NAMES,
    DEFAULT_FULL_SCALE,
    MAGNITUDE_SCALE,
    check_split_actions,
    constant_actions,
    full_scale_from_stats,
    merge_actions,
    num_actions_for_frames,
    num_frames_for_actions,
    parse_actions,
    split_actions,
)


def test_names_and_scale_follow_the_seed():
    assert ACTION_NAMES == ("Forward", "Back", "Left", "Right", "Yaw Left", "Yaw Right", "Pitch Up", "Pitch Down")
    assert list(MAGNITUDE_SCALE) == [100, 100, 100, 100, 1, 1, 1, 1]


@pytest.mark.parametrize("frames,steps", [(1, 0), (5, 1), (9, 2), (33, 8), (81, 20), (121, 30)])
def test_num_actions_for_frames(frames, steps):
    assert num_actions_for_frames(frames) == steps
    assert num_frames_for_actions(steps) == frames


@pytest.mark.parametrize("frames", [0, 2, 80, 82, -3, 8.0, True])
def test_num_actions_rejects_bad_frame_counts(frames):
    with pytest.raises(ValueError, match="num_frames"):
        num_actions_for_frames(frames)


def test_split_applies_scale_exactly_once_for_every_input_form():
    raw = constant_actions(3, {"Forward": 0.01, "Yaw Left": 1.5})  # (3, 2, 8)
    forms = [raw, raw.tolist(), json.dumps(raw.tolist()), raw.unsqueeze(0)]
    for form in forms:
        binary, magnitude = split_actions(form)
        assert binary.shape == magnitude.shape == (1, 3, 8)
        assert binary.dtype == magnitude.dtype == torch.float32
        assert binary[0, 0].tolist() == [1, 0, 0, 0, 1, 0, 0, 0]
        assert magnitude[0, 0, 0].item() == pytest.approx(1.0)  # 0.01 * 100
        assert magnitude[0, 0, 4].item() == pytest.approx(1.5)  # 1.5 * 1
    assert torch.allclose(merge_actions(binary, magnitude), raw.unsqueeze(0))


def test_split_with_custom_scale():
    _, magnitude = split_actions(constant_actions(1, {"Right": 0.5}), scale=[2] * 8)
    assert magnitude[0, 0, 3].item() == 1.0


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(3, 8), "shape"),
    (torch.zeros(3, 3, 8), "shape"),
    (torch.zeros(3, 2, 7), "shape"),
    (torch.zeros(0, 2, 8), "shape"),
    (torch.full((2, 2, 8), float("nan")), "NaN"),
    (torch.full((2, 2, 8), float("inf")), "NaN or Inf"),
    ("[[1, 2", "JSON"),
    ("hello", "JSON"),
    ([["a"]], "numeric"),
])
def test_parse_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_actions(bad)


def test_parse_rejects_non_binary_flags_and_negative_magnitudes():
    raw = torch.zeros(2, 2, 8)
    raw[0, 0, 3] = 0.5
    with pytest.raises(ValueError, match="0 or 1"):
        parse_actions(raw)
    raw = torch.zeros(2, 2, 8)
    raw[1, 1, 2] = -0.1
    with pytest.raises(ValueError, match=">= 0"):
        parse_actions(raw)


def test_seed_form_checks():
    binary, magnitude = check_split_actions(torch.ones(4, 8), None)
    assert binary.shape == (1, 4, 8) and magnitude.abs().sum() == 0
    with pytest.raises(ValueError, match="differ in shape"):
        check_split_actions(torch.ones(1, 4, 8), torch.ones(1, 3, 8))
    with pytest.raises(ValueError, match="0 or 1"):
        check_split_actions(torch.full((1, 4, 8), 2.0), torch.ones(1, 4, 8))
    with pytest.raises(ValueError, match=">= 0"):
        check_split_actions(torch.ones(1, 4, 8), -torch.ones(1, 4, 8))
    with pytest.raises(ValueError, match="shape"):
        check_split_actions(torch.ones(1, 4, 7), torch.ones(1, 4, 7))


def test_constant_actions_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown action"):
        constant_actions(2, {"Up": 1.0})


def test_full_scale_from_action_stats():
    stats = {"num_intervals": 10, "actions": {name: {"count": 0, "p90": None} for name in ACTION_NAMES}}
    stats["actions"]["Forward"] = {"count": 5, "p90": 0.0123, "p95": 0.02}
    stats["actions"]["Yaw Right"] = {"count": 5, "p90": 1.7}
    scale, source = full_scale_from_stats(stats)
    assert scale[0] == 0.0123 and scale[5] == 1.7 and scale[1] == DEFAULT_FULL_SCALE[1]
    assert source[0].startswith("action_stats") and source[1] == "default"
    assert full_scale_from_stats(None) == (DEFAULT_FULL_SCALE, ["default"] * 8)


# ---- issue 23: survivors of the mutation run (scripts/mutation.sh models/action_format.py) ------------------------
def test_error_messages_name_the_field_and_the_bad_value():
    with pytest.raises(ValueError, match=r"^num_frames must be an int, got float$"):
        num_actions_for_frames(9.0)
    with pytest.raises(ValueError, match=r"^num_frames must be 4k\+1 \(1, 5, 9, \.\.\., 81\), got 8: the VAE "
                                         r"compresses 4 frames into one latent frame after the first$"):
        num_actions_for_frames(8)
    with pytest.raises(ValueError, match=r"^actions: expected a numeric \(T, 2, 8\) array, got list "):
        parse_actions([["a"] * 8] * 2)
    with pytest.raises(ValueError, match=r"^moves: not valid JSON"):
        parse_actions("[", name="moves")
    flags = torch.zeros(1, 2, 8)
    flags[0, 0, 1], flags[0, 0, 2] = 1, 0.5  # a 0 and a 1 before the bad flag
    with pytest.raises(ValueError, match=r"^actions: binary flags \(index 0 of axis 2\) must be 0 or 1, found 0\.5$"):
        parse_actions(torch.stack([flags[0], torch.zeros(1, 8).expand(2, 8)], dim=1))
    with pytest.raises(ValueError, match=r"^scale: expected 8 positive finite numbers, got \[1, 2\]$"):
        split_actions(torch.zeros(1, 2, 8), scale=[1, 2])
    with pytest.raises(ValueError, match=r"^magnitude of 'Forward' must be a finite number >= 0, got -1$"):
        constant_actions(1, {"Forward": -1})


@pytest.mark.parametrize("scale", [[1.0] * 7, [1.0] * 7 + [0.0], [1.0] * 7 + [float("nan")],
                                   [1.0] * 7 + [float("inf")], [1.0] * 7 + [-1.0]])
def test_a_scale_needs_8_positive_finite_numbers(scale):
    with pytest.raises(ValueError, match="^scale: expected 8 positive finite numbers"):
        split_actions(torch.zeros(1, 2, 8), scale=scale)


def test_integer_and_double_input_become_float32():
    raw = [[[0, 1, 0, 0, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0, 0, 0]]]  # (T=1, 2, 8) of ints
    assert parse_actions(raw).dtype == torch.float32
    assert parse_actions(torch.tensor(raw, dtype=torch.float64)).dtype == torch.float32
    binary, magnitude = split_actions(raw, scale=[3] * 8)  # an integer scale: still float32 magnitudes
    assert binary.dtype == magnitude.dtype == torch.float32 and magnitude[0, 0, 1].item() == 6.0
    binary, magnitude = check_split_actions([[0, 1] + [0] * 6], [[0, 2] + [0] * 6])
    assert binary.dtype == magnitude.dtype == torch.float32


def test_seed_form_messages_and_edges():
    one = torch.zeros(1, 1, 8)  # T = 1: the shortest valid form, flags of 0 are valid
    binary, magnitude = check_split_actions(one, one)
    assert binary.shape == magnitude.shape == (1, 1, 8)
    cases = [
        ((None, one), r"^action_binary is required when action_magnitude is given$"),
        ((torch.zeros(1, 0, 8), torch.zeros(1, 0, 8)),
         r"^action_binary: expected shape \(T, 8\) or \(B, T, 8\), got \(1, 0, 8\)$"),
        ((one, torch.zeros(1, 1, 7)), r"^action_magnitude: expected shape \(T, 8\) or \(B, T, 8\), got \(1, 1, 7\)$"),
        ((one, torch.full((1, 1, 8), float("nan"))), r"^action_magnitude: contains NaN or Inf$"),
        ((one, torch.zeros(1, 2, 8)), r"^action_binary \(1, 1, 8\) and action_magnitude \(1, 2, 8\) differ in shape$"),
        ((one + 2, one), r"^action_binary: flags must be 0 or 1$"),
        ((one, one - 1), r"^action_magnitude: magnitudes must be >= 0$"),
        (("[", one), r"^action_binary: not valid JSON"),
        ((one, "["), r"^action_magnitude: not valid JSON"),
    ]
    for (b, m), match in cases:
        with pytest.raises(ValueError, match=match):
            check_split_actions(b, m)


def test_constant_actions_zero_magnitude_is_off_and_bad_values_are_refused():
    raw = constant_actions(2, {"Forward": 0.0, "Yaw Left": 0.5})
    assert raw[:, 0].tolist() == [[0, 0, 0, 0, 1, 0, 0, 0]] * 2 and raw[:, 1, 4].tolist() == [0.5, 0.5]
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="^magnitude of 'Back' must be a finite number >= 0"):
            constant_actions(1, {"Back": bad})


def test_full_scale_ignores_a_zero_percentile():
    scale, source = full_scale_from_stats({"actions": {"Forward": {"p90": 0.0}, "Back": {"p90": 0.02}}})
    assert scale[:2] == (DEFAULT_FULL_SCALE[0], 0.02) and source[:2] == ["default", "action_stats p90"]


def test_a_float64_scale_still_gives_float32_magnitudes_and_step_counts_are_ints():
    binary, magnitude = split_actions(torch.zeros(1, 2, 8), scale=np.full(8, 2.0))
    assert magnitude.dtype == torch.float32
    assert [type(num_actions_for_frames(n)) for n in (1, 9, 81)] == [int] * 3
