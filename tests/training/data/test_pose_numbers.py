"""training.data.pose_actions with hand-made poses and exact numbers: each formula, each threshold at its edge,
each refusal's message (issue 23: the Sekai pose conversion's mutants)."""
import re

import numpy as np
import pytest

from models.action_format import ACTION_NAMES
from training.data.pose_actions import (
    check_poses,
    estimate_up,
    heading_frames,
    latent_indices,
    max_steps,
    mean_tilt_deg,
    measure_motion,
    motion_to_actions,
    normalise_spacing,
    poses_to_actions,
    rotation_threshold,
    translation_threshold,
)

IDX = {name: i for i, name in enumerate(ACTION_NAMES)}


def rot_x(deg):
    a = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def rot_y(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def rot_z(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def pose(rotation, position):
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, position
    return out


WORLD = pose(rot_z(20) @ rot_x(-35) @ rot_y(70), [3.0, -1.0, 2.0])  # any rigid relabelling of the world


def test_the_camera_frame_formulas():
    """Start camera S, end camera S @ [R | t]: forward/right/down = t.z/t.x/t.y, yaw and pitch from R's forward
    axis, roll about the forward axis (degrees; yaw + right, pitch + up)."""
    start = WORLD @ pose(rot_y(10), [0.5, 0.2, -0.3])
    end = start @ pose(rot_y(12) @ rot_x(7), [0.03, -0.02, 0.05])
    motion = measure_motion(np.stack([start, end]))
    expected = {"forward": 0.05, "right": 0.03, "down": -0.02, "yaw": 12.0, "pitch": 7.0, "roll": 0.0}
    for key, value in expected.items():
        assert motion[key] == pytest.approx([value], abs=1e-9), key
    rolled = measure_motion(np.stack([start, start @ pose(rot_z(9), [0, 0, 0])]))
    assert rolled["roll"] == pytest.approx([9.0]) and rolled["yaw"] == pytest.approx([0.0], abs=1e-9)


def test_the_heading_frame_reads_a_tilted_camera_level():
    """World up -y; cameras tilted 40 degrees down, yawing 6 degrees per interval and flying 0.1 along their
    heading: the heading frame reads yaw 6, pitch 0, forward 0.1, nothing vertical."""
    up = np.array([0.0, -1.0, 0.0])
    poses, position = [], np.zeros(3)
    for k in range(4):
        rotation = rot_y(6 * k) @ rot_x(-40)
        poses.append(pose(rotation, position))
        position = position + 0.1 * (rot_y(6 * k) @ np.array([0, 0, 1.0]))
    poses = np.stack([WORLD @ p for p in poses])
    world_up = WORLD[:3, :3] @ up
    motion = measure_motion(poses, heading_frame=True, up=2 * world_up)  # any length: normalised
    assert motion["yaw"] == pytest.approx([6.0] * 3)
    assert motion["forward"] == pytest.approx([0.1] * 3)
    for key in ("right", "down", "pitch", "roll"):
        assert motion[key] == pytest.approx([0.0] * 3, abs=1e-9), key
    frames, elevation, roll = heading_frames(poses, world_up)
    assert elevation == pytest.approx([-40.0] * 4) and roll == pytest.approx([0.0] * 4, abs=1e-9)
    np.testing.assert_allclose(frames[:, :3, 1], np.tile(-world_up, (4, 1)), atol=1e-12)  # down
    np.testing.assert_allclose(frames[:, :3, 3], poses[:, :3, 3])
    np.testing.assert_allclose(frames[:, 3], np.tile([0, 0, 0, 1.0], (4, 1)))
    assert mean_tilt_deg(poses, world_up) == pytest.approx(40.0)
    rolled = np.stack([WORLD @ pose(rot_z(15), [0, 0, 0])])
    assert heading_frames(rolled, world_up)[2] == pytest.approx([-15.0])  # arcsin(x . up): right side down < 0


def test_the_heading_frame_estimates_up_when_not_given():
    poses = np.stack([WORLD @ pose(rot_y(9 * k) @ rot_x(-25), [0.1 * k, 0, 0]) for k in range(5)])
    given = measure_motion(poses, heading_frame=True, up=WORLD[:3, :3] @ np.array([0.0, -1.0, 0.0]))
    estimated = measure_motion(poses, heading_frame=True)
    for key in given:
        np.testing.assert_allclose(estimated[key], given[key], atol=1e-9)


@pytest.mark.parametrize("tilt", [0.0, 30.0])
def test_up_from_the_x_axes_when_the_clip_yaws(tilt):
    poses = np.stack([WORLD @ pose(rot_y(5 * k) @ rot_x(-tilt), [0, 0, 0.1 * k]) for k in range(6)])
    up, how, spread = estimate_up(poses)
    np.testing.assert_allclose(up, WORLD[:3, :3] @ np.array([0, -1.0, 0]), atol=1e-9)
    assert how == "x_axes" and spread > 2e-4


def test_up_from_the_path_and_from_camera_y_without_yaw():
    level_flight = np.stack([WORLD @ pose(rot_x(-20), [0, 0, 0.1 * k]) for k in range(6)])  # 20 deg down, no yaw
    up, how, _ = estimate_up(level_flight)
    np.testing.assert_allclose(up, WORLD[:3, :3] @ np.array([0, -1.0, 0]), atol=1e-9)
    assert how == "x_axes+path"
    hover = np.stack([WORLD @ pose(rot_x(-20), [0, 0, 0])] * 6)
    up, how, spread = estimate_up(hover)
    np.testing.assert_allclose(up, WORLD[:3, :3] @ (rot_x(-20) @ np.array([0, -1.0, 0])), atol=1e-9)
    assert how == "camera_y" and spread == pytest.approx(0.0, abs=1e-12)


def test_thresholds_and_their_floors():
    assert translation_threshold(0.2) == pytest.approx(0.05)  # a quarter of the median step
    assert translation_threshold(0.0, step=2.0) == pytest.approx(8e-4)  # the floor: 4 x step x 1e-4
    assert rotation_threshold() == 0.25 and rotation_threshold(2.0) == 0.5


def test_each_action_at_its_threshold_and_cone():
    """Above the threshold (strictly) and inside the 60-degree cone (strictly) is a flag; magnitude |value|."""
    motion = {"forward": np.array([0.2, 0.1, 0.0, -0.2, 0.0, 0.0, 0.1, 0.0]),
              "right": np.array([0.0, 0.0, 0.3, 0.0, -0.2, 0.0, 0.0, 0.0]),
              "down": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.0]),
              "yaw": np.array([0.0, 0.0, 0.0, 0.0, 0.0, -2.0, 0.0, 1.0]),
              "pitch": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, -1.0]),
              "roll": np.zeros(8)}
    actions = motion_to_actions(motion, tau_t=0.1, tau_r=1.0)
    assert actions.dtype == np.float32 and actions.shape == (8, 2, 8)
    expected = np.zeros((8, 2, 8), np.float32)
    expected[0, :, IDX["Forward"]] = (1, 0.2)  # 0.1 is not above 0.1 (row 1)
    expected[2, :, IDX["Right"]] = (1, 0.3)
    expected[3, :, IDX["Back"]] = (1, 0.2)
    expected[4, :, IDX["Left"]] = (1, 0.2)
    expected[5, :, IDX["Yaw Left"]] = (1, 2.0)
    expected[5, :, IDX["Pitch Up"]] = (1, 3.0)
    # row 6: forward 0.1 with down 0.2 is outside the cone (0.1 < 0.5 x 0.22); row 7: rotations at the threshold
    np.testing.assert_allclose(actions, expected)
    cone = {**{k: np.zeros(2) for k in motion}, "forward": np.array([0.5, 0.5]), "down": np.array([0.86, 0.87])}
    assert actions_flag(motion_to_actions(cone, 0.1, 1.0), "Forward") == [1, 0]  # 0.5 / |(0.5, 0.86)| > 0.5
    turns = {**{k: np.zeros(2) for k in motion}, "yaw": np.array([1.5, 0.0]), "pitch": np.array([0.0, -1.5])}
    got = motion_to_actions(turns, 0.1, 1.0)
    assert actions_flag(got, "Yaw Right") == [1, 0] and actions_flag(got, "Pitch Down") == [0, 1]
    assert got[0, 1, IDX["Yaw Right"]] == 1.5 and got[1, 1, IDX["Pitch Down"]] == 1.5


def actions_flag(actions, name):
    return actions[:, 0, IDX[name]].astype(int).tolist()


def test_boundaries_and_how_many_fit():
    assert latent_indices(3).tolist() == [0, 4, 8, 12]
    assert latent_indices(4, 1.25).tolist() == [0, 5, 10, 15, 20]
    assert latent_indices(3, 25 / 24).tolist() == [0, 4, 8, 12]  # 4.17, 8.33, 12.5 -> 12 (round half to even)
    assert max_steps(13) == 3 and max_steps(12) == 2 and max_steps(5) == 1 and max_steps(4) == 0
    assert max_steps(21, 1.25) == 4 and max_steps(20, 1.25) == 3
    assert max_steps(14, 25 / 24) == 3 and max_steps(13, 25 / 24) == 3  # boundary 12 needs 13 poses
    assert max_steps(18, 25 / 24) == 4  # 16.67 -> 17


def test_spacing_factor_per_interval():
    motion = {"forward": np.array([1.0, 1.0, 1.0]), "yaw": np.array([2.0, 2.0, 2.0])}
    out = normalise_spacing(motion, 3, 1.25)  # intervals of 5 source frames = 4 x 1.25: unchanged
    np.testing.assert_allclose(out["forward"], [1.0, 1.0, 1.0])
    out = normalise_spacing(motion, 3, 25 / 24)  # intervals 4, 4, 4 frames for 4.1667 each
    np.testing.assert_allclose(out["yaw"], [2 * 4 * 25 / 24 / 4] * 3)


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match=re.escape("poses: expected shape (N, 4, 4) with N >= 2, got (1, 4, 4)")):
        check_poses(np.eye(4)[None])
    with pytest.raises(ValueError, match=re.escape("got (2, 3, 4)")):
        check_poses(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=re.escape("got (4, 4)")):
        check_poses(np.eye(4))
    bad = np.tile(np.eye(4), (3, 1, 1))
    bad[1, 0, 3] = np.nan
    with pytest.raises(ValueError, match="^poses: contain NaN or Inf$"):
        check_poses(bad)
    assert check_poses(np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))).dtype == np.float64
    still = np.tile(np.eye(4), (9, 1, 1))
    for step in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"^step must be > 0, got {step}$"):
            poses_to_actions(still, step=step)
    with pytest.raises(ValueError, match=re.escape("num_steps: 3 intervals of 4 source frames need more than 9 poses")):
        poses_to_actions(still, num_steps=3)
    with pytest.raises(ValueError, match=re.escape("num_steps: 0 intervals of 5 source frames need more than 9")):
        poses_to_actions(still, step=1.25, num_steps=0)
    assert poses_to_actions(still, num_steps=2).shape == (2, 2, 8)
    assert poses_to_actions(still).shape == (2, 2, 8)  # all that fit


def test_a_given_median_and_up_are_used():
    poses = np.stack([WORLD @ pose(rot_x(-30), [0, 0, 0.01 * k]) for k in range(9)])  # forward 0.04 per interval
    assert actions_flag(poses_to_actions(poses), "Forward") == [1, 1]
    assert actions_flag(poses_to_actions(poses, median=0.2), "Forward") == [0, 0]  # threshold 0.05
    up = WORLD[:3, :3] @ np.array([0, -1.0, 0])
    camera = poses_to_actions(poses)  # looking 30 deg down, flying level: the camera reads 0.04 x cos 30 forward
    assert camera[:, 1, IDX["Forward"]] == pytest.approx([0.04 * np.cos(np.radians(30))] * 2)
    level = poses_to_actions(poses, heading_frame=True, up=up)  # the heading frame reads the level 0.04
    assert level[:, 1, IDX["Forward"]] == pytest.approx([0.04] * 2)
    tilted_up = rot_x(10) @ np.array([0, -1.0, 0])  # a wrong up changes the reading: it is used
    assert not np.allclose(poses_to_actions(poses, heading_frame=True, up=WORLD[:3, :3] @ tilted_up), level)


def test_how_many_steps_fit_matches_a_brute_force_count():
    for step in (0.5, 0.8, 1.0, 25 / 24, 1.25, 2.0):
        for num_poses in range(0, 40):
            fits = [k for k in range(0, 40) if latent_indices(k, step)[-1] <= num_poses - 1]
            assert max_steps(num_poses, step) == (max(fits) if fits else 0), (step, num_poses)
    assert translation_threshold(0.0) == pytest.approx(4e-4)  # the floor at the default step of 1


def scaled(poses, x=2.0, y=3.0, z=0.5):
    """Camera axes of other lengths (a scale in the matrix): every direction read from them is normalised."""
    out = poses.copy()
    out[:, :3, 0] *= x
    out[:, :3, 1] *= y
    out[:, :3, 2] *= z
    return out


def test_axes_of_any_length_read_the_same():
    up = WORLD[:3, :3] @ np.array([0.0, -1.0, 0.0])
    yawing = np.stack([WORLD @ pose(rot_y(5 * k) @ rot_x(-30) @ rot_z(3 * k), [0, 0, 0.1 * k]) for k in range(6)])
    plain_up, plain_how, plain_spread = estimate_up(yawing)
    long_up, long_how, long_spread = estimate_up(scaled(yawing))
    np.testing.assert_allclose(long_up, plain_up, atol=1e-9)
    assert long_how == plain_how == "x_axes" and long_spread == pytest.approx(plain_spread)
    assert mean_tilt_deg(scaled(yawing), up) == pytest.approx(30.0)
    plain_frames, plain_elevation, plain_roll = heading_frames(yawing, up)
    frames, elevation, roll = heading_frames(scaled(yawing), up)
    np.testing.assert_allclose(frames, plain_frames, atol=1e-12)
    np.testing.assert_allclose(roll, plain_roll, atol=1e-9)
    np.testing.assert_allclose(elevation, plain_elevation, atol=1e-9)
    assert roll == pytest.approx([-3.0 * k * np.cos(np.radians(30)) for k in range(6)], abs=0.1)  # rolled


def test_the_level_right_axis_is_horizontal_and_unit_for_a_rolled_camera():
    up = WORLD[:3, :3] @ np.array([0.0, -1.0, 0.0])
    rolled = np.stack([WORLD @ pose(rot_y(20) @ rot_x(-30) @ rot_z(25), [0, 0, 0])] * 2)
    frames = heading_frames(rolled, up)[0]
    np.testing.assert_allclose(frames[:, :3, 0] @ up, 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(frames[:, :3, 0], axis=1), 1.0)


def test_the_spread_returned_is_the_deciding_eigenvalue():
    """x axes 0 and 10 degrees apart: the mean scatter's eigenvalues are 0 (up), (1 - cos 10) / 2 and
    (1 + cos 10) / 2; the middle one decides. A level flight without yaw, 3 steps forward and 1 sideways (along
    x): the x axes give e e^T, the path (3 d d^T + e e^T) / 4 (weights |step|^2 over their sum), so the
    eigenvalues are 0, 3/4 and 5/4."""
    two = np.stack([WORLD @ pose(rot_y(a), [0, 0, 0]) for a in (0.0, 10.0)])
    assert estimate_up(two)[2] == pytest.approx((1 - np.cos(np.radians(10))) / 2)
    positions = [[0, 0, 0], [0, 0, 0.1], [0, 0, 0.2], [0, 0, 0.3], [0.1, 0, 0.3]]
    level = np.stack([WORLD @ pose(rot_x(-20), p) for p in positions])
    up, how, spread = estimate_up(level)
    assert how == "x_axes+path" and spread == pytest.approx(0.75)


def test_without_yaw_or_path_up_is_the_mean_camera_up_made_orthogonal_to_the_mean_right():
    cameras = np.stack([WORLD @ pose(rot_x(-40), [0, 0, 0]), WORLD @ pose(rot_y(0.5) @ rot_x(-10), [0, 0, 0])])
    up, how, _ = estimate_up(cameras)
    mean_x = cameras[:, :3, 0].mean(0)
    assert how == "camera_y"
    assert np.linalg.norm(up) == pytest.approx(1.0, abs=1e-12) and up @ mean_x == pytest.approx(0.0, abs=1e-12)
    assert up @ -cameras[:, :3, 1].mean(0) > 0.9


def test_up_comes_from_every_pose_of_the_clip_not_only_the_boundaries():
    """A camera 40 degrees down climbing straight up, with one yaw wiggle between boundaries: the wiggle lets all
    the poses find the true up, so the heading frame reads no translation action (climbing has none). From the
    boundary poses alone up would fall back to the tilted camera's up, reading Back."""
    poses = []
    for k in range(9):
        yaw = 10.0 if k in (1, 5) else 0.0
        poses.append(WORLD @ pose(rot_y(yaw) @ rot_x(-40), [0, -0.02 * k, 0]))
    actions = poses_to_actions(np.stack(poses), heading_frame=True)
    assert not actions[:, 0, :4].any()


def test_fractional_steps_size_the_clip_and_the_threshold_floor():
    still = np.tile(np.eye(4), (21, 1, 1))
    assert poses_to_actions(still, step=1.25).shape == (4, 2, 8)  # boundaries 0, 5, .., 20
    assert poses_to_actions(still[:5]).shape == (1, 2, 8) and poses_to_actions(still, num_steps=1).shape == (1, 2, 8)
    with pytest.raises(ValueError, match="num_steps: 3 intervals of 5 source frames need more than 14 poses"):
        poses_to_actions(still[:14], step=1.25, num_steps=3)
    with pytest.raises(ValueError, match="num_steps: 3 intervals of 4 source frames need more than 12 poses"):
        poses_to_actions(still[:12], num_steps=3)
    slow = np.stack([pose(np.eye(3), [0, 0, 9e-5 * i]) for i in range(21)])  # 4.5e-4 per 5-frame interval
    floor = poses_to_actions(slow, step=1.25, median=0.0)  # floor 4 x 1.25 x 1e-4 = 5e-4: below it
    assert not floor[:, 0, IDX["Forward"]].any()
