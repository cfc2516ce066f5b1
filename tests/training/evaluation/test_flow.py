"""training.evaluation.flow: optical flow -> camera motion -> the 8 actions, validated on synthetic flights."""
import numpy as np
import pytest

from models.action_format import ACTION_NAMES, constant_actions
from models.media import read_video, write_mp4
from training.data.scene import make_scene
from training.data.synthetic import DroneState, fly, render_flight
from training.evaluation.flow import (
    FlowSettings,
    as_frames,
    estimate_actions,
    estimate_motion,
    fibonacci_hemisphere,
    fit_motion,
    rotation_basis,
)
from training.evaluation.metrics import evaluate_clips, score_video
from training.evaluation.sources import synthetic_flights

IDX = {name: i for i, name in enumerate(ACTION_NAMES)}


def flight(*steps, seed=11, size=96, heading=40.0):
    """Frames (4T+1, size, size, 3) and flown (T, 2, 8) of per-interval {name: magnitude} steps."""
    actions = np.concatenate([constant_actions(1, step).numpy() for step in steps]).astype(np.float64)
    start = DroneState(heading_deg=heading)
    poses, _ = fly(actions, start)
    scene = make_scene(seed, clear_xz=poses[:, [0, 2], 3])
    frames, _, flown = render_flight(actions, start, scene, size, size)
    return frames, flown


def names(actions, t):
    return {ACTION_NAMES[i] for i in np.flatnonzero(actions[t, 0])}


@pytest.fixture(scope="module")
def validation():
    """16 random training.synthetic flights (96x96, 33 frames = 8 intervals each), seeds unused in calibration."""
    return evaluate_clips(synthetic_flights(16, seed=2, frames=33, height=96, width=96))["metrics"]


def test_synthetic_validation_accuracy_and_every_action(validation):
    assert validation["intervals"] == 128
    assert validation["accuracy"] >= 0.95, validation["accuracy"]  # measured 0.975 (issue: >= 0.9)
    assert validation["exact_match"] >= 0.88  # measured 0.922; chance ~0.07
    for name, scores in validation["per_action"].items():
        assert scores["support"] >= 10, name
        assert scores["f1"] >= 0.85, (name, scores)  # measured >= 0.94 (issue: >= 0.8)
    assert validation["chance"]["p_value"] < 0.01


def test_forward_back_and_yaw_strafe_are_not_confused(validation):
    rates = validation["confusion_rates"]
    assert rates["forward_back"] <= 0.05  # measured 0.033 (one diagonal flight past a close object)
    assert rates["yaw_strafe"] <= 0.05  # measured 0.011
    assert rates["left_right"] == rates["yaw_left_right"] == rates["pitch_up_down"] == 0.0
    axes = validation["magnitude"]["axes"]
    assert axes["yaw"]["pearson"] > 0.9 and axes["pitch"]["pearson"] > 0.9
    assert axes["forward"]["pearson"] > 0.8 and axes["right"]["pearson"] > 0.8


def test_static_video_gives_no_action(tmp_path):
    frames, _ = flight({}, {}, {}, {})  # a hover: bit-identical frames
    assert not estimate_actions(frames)[:, 0].any()
    write_mp4(tmp_path / "static.mp4", frames, 24)  # compression noise must not read as motion either
    motion = estimate_motion(read_video(tmp_path / "static.mp4"))
    assert np.abs(motion["yaw"]).max() < 0.05 and np.abs(motion["pitch"]).max() < 0.05
    assert not estimate_actions(read_video(tmp_path / "static.mp4"))[:, 0].any()
    single = np.repeat(frames[:1], 9, axis=0)
    assert not estimate_actions(single)[:, 0].any()


def test_forward_flight_reversed_reads_back():
    frames, flown = flight(*[{"Forward": 0.012}] * 4)
    forward = estimate_actions(frames)
    assert all(names(forward, t) == {"Forward"} for t in range(4)), forward[:, 0]
    backward = estimate_actions(frames[::-1])
    assert all(names(backward, t) == {"Back"} for t in range(4)), backward[:, 0]
    assert 0.006 < forward[:, 1, IDX["Forward"]].mean() < 0.024  # calibrated scale: commanded 0.012
    assert 0.006 < backward[:, 1, IDX["Back"]].mean() < 0.024


def test_mirrored_video_swaps_left_right_and_yaw():
    steps = [{"Left": 0.012}, {"Left": 0.012}, {"Yaw Right": 1.2}, {"Yaw Right": 1.2}, {"Right": 0.01, "Yaw Left": 1.0}]
    frames, flown = flight(*steps)
    swap = {"Left": "Right", "Right": "Left", "Yaw Left": "Yaw Right", "Yaw Right": "Yaw Left"}
    original, mirrored = estimate_actions(frames), estimate_actions(frames[:, :, ::-1])
    for t, step in enumerate(steps):
        assert names(original, t) == set(step), (t, names(original, t))
        assert names(mirrored, t) == {swap[n] for n in step}, (t, names(mirrored, t))
    yaw = estimate_motion(frames)["yaw"]
    assert np.allclose(yaw[2:4], 1.2, rtol=0.2)  # degrees per interval (measured 1.22, 1.03)


def test_rotation_magnitudes_follow_the_focal_length():
    frames, _ = flight({"Pitch Up": 1.5}, {"Pitch Down": 0.8})
    motion = estimate_motion(frames)
    assert np.allclose(motion["pitch"], [1.5, -0.8], atol=0.1)
    wide = estimate_motion(frames, FlowSettings(focal=0.35))  # assuming half the focal length doubles the angles
    assert np.allclose(wide["pitch"] / motion["pitch"], 2.0, rtol=0.15)


def test_fit_motion_recovers_an_exact_rigid_flow():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.6, 0.6, 500), rng.uniform(-0.6, 0.6, 500)
    depth = 1.0 / (2.0 + 0.5 * x + 2.0 * y + 0.3 * x * y)  # (n,) a smooth positive inverse depth
    direction = np.array([0.3, 0.0, 1.0]) / np.hypot(0.3, 1.0)
    omega = np.radians([0.4, -0.8, 0.0])
    bu, bv = rotation_basis(x, y)
    flow = np.stack([0.1 * depth * (x * direction[2] - direction[0]) + bu @ omega,
                     0.1 * depth * (y * direction[2] - direction[1]) + bv @ omega], 1)  # (n, 2) normalised
    fit = fit_motion(x, y, flow)
    assert np.degrees(np.arccos(fit["direction"] @ direction)) < 2.0
    assert np.allclose(np.degrees(fit["rotation"]), np.degrees(omega), atol=0.02)
    assert fit["rotation_residual"] > 10 * fit["full_residual"]  # the translation is needed to explain it
    assert len(fibonacci_hemisphere(200)) == 200


def test_inputs_are_checked_and_score_video_aligns_lengths():
    frames, flown = flight({"Yaw Left": 1.0}, {"Yaw Left": 1.0})
    assert np.array_equal(as_frames(frames.astype(np.float32) / 255.0), frames)
    assert np.array_equal(as_frames(list(frames)), frames)
    with pytest.raises(ValueError, match=r"frames: expected \(N, H, W, 3\)"):
        estimate_actions(frames[..., 0])
    with pytest.raises(ValueError, match="at least 5 frames"):
        estimate_actions(frames[:4])
    with pytest.raises(ValueError, match="focal must be a positive number"):
        FlowSettings(focal=0)
    result = score_video(frames, np.concatenate([flown, flown]))  # actions longer than the video
    assert result["steps"] == 2 and "first 2 intervals" in result["note"]
    assert result["per_action"]["Yaw Left"]["f1"] == 1.0 and result["exact_match"] == 1.0


def test_stride_one_reads_fast_turns_and_flights_that_boundaries_miss():
    """10-degree turns and 0.06-unit hops per interval (the toy world's speed): summing every frame pair's fit
    reads them; the boundary-only fit (calibrated on slow flights) is allowed to be worse, not better."""
    steps = ({"Yaw Left": 10.0}, {"Pitch Up": 9.0}, {"Forward": 0.06}, {"Right": 0.06})
    frames, flown = flight(*steps, size=128)
    fine = FlowSettings(stride=1)
    motion = estimate_motion(frames, fine)
    assert len(motion["yaw"]) == 4 and motion["readable"].all()
    assert -12.0 < motion["yaw"][0] < -8.0 and 7.0 < motion["pitch"][1] < 11.0  # degrees, summed over 4 pairs
    estimated = estimate_actions(frames, fine)
    assert [names(estimated, t) for t in range(4)] == [{"Yaw Left"}, {"Pitch Up"}, {"Forward"}, {"Right"}]
    with pytest.raises(ValueError, match="stride must be 1, 2 or 4"):
        FlowSettings(stride=3)
