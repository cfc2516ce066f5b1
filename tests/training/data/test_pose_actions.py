"""training.data.pose_actions: camera trajectories -> actions, round-tripped with synthetic flights."""
import numpy as np
import pytest

from models.action_format import ACTION_NAMES, constant_actions
from training.data.pose_actions import estimate_up, median_step, poses_to_actions
from training.data.sekai import Settings, plan_video
from training.data.synthetic import DroneState, fly, random_actions

IDX = {name: i for i, name in enumerate(ACTION_NAMES)}


MIRROR = [0, 1, 3, 2, 5, 4, 6, 7]  # Left <-> Right, Yaw Left <-> Yaw Right


def flight(seed, tilt=0.0, max_pitch=30.0, steps=20):
    """(poses float32 like Sekai files, flown actions) of a random flight from a random start."""
    rng = np.random.default_rng(seed)
    start = DroneState(*rng.uniform(-0.3, 0.3, 2), 0.03, rng.uniform(-180, 180), 0.0, tilt)
    poses, flown = fly(random_actions(steps, rng, max_pitch_deg=max_pitch), start)
    return poses.astype(np.float32), flown


def assert_recovered(got, flown):
    assert np.array_equal(got[:, 0], flown[:, 0])
    active = flown[:, 0] > 0
    assert np.abs(got[:, 1][active] / flown[:, 1][active] - 1).max() < 0.05
    assert not got[:, 1][~active].any()


@pytest.mark.parametrize("heading_frame, tilt, max_pitch", [(False, 0.0, 15.0), (True, 0.0, 30.0),
                                                            (True, 45.0, 30.0)])
def test_recovers_commanded_actions(heading_frame, tilt, max_pitch):
    seen = np.zeros(8, bool)
    for seed in range(25):
        poses, flown = flight(seed, tilt, max_pitch)
        got = poses_to_actions(poses, heading_frame=heading_frame)
        assert got.shape == (20, 2, 8) and got.dtype == np.float32
        assert_recovered(got, flown)
        seen |= flown[:, 0].any(axis=0) > 0
    assert seen.all()


def test_tilted_camera_needs_the_heading_frame():
    actions = constant_actions(10, {"Yaw Right": 2.0}).numpy()
    actions[5:] = constant_actions(5, {"Forward": 0.01}).numpy()
    poses, _ = fly(actions, DroneState(tilt_deg=45.0))
    level = poses_to_actions(poses, heading_frame=True)
    assert np.allclose(level[:5, 1, IDX["Yaw Right"]], 2.0, rtol=1e-6)
    assert np.allclose(level[5:, 1, IDX["Forward"]], 0.01, rtol=1e-6)
    camera = poses_to_actions(poses, heading_frame=False)
    assert np.allclose(camera[:5, 1, IDX["Yaw Right"]], 2.0 * np.cos(np.radians(45.0)), rtol=0.02)  # 1.41, not 2
    assert np.allclose(camera[5:, 1, IDX["Forward"]], 0.01 * np.cos(np.radians(45.0)), rtol=0.02)
    assert estimate_up(poses)[1] == "x_axes"


def test_up_estimate_without_yaw_uses_the_path_only_when_plausible():
    forward = constant_actions(10, {"Forward": 0.01}).numpy()
    tilted, _ = fly(forward, DroneState(tilt_deg=40.0))
    up, source, _ = estimate_up(tilted)
    assert source == "x_axes+path" and np.allclose(up, [0, -1, 0], atol=1e-9)  # y is down
    assert np.allclose(poses_to_actions(tilted, heading_frame=True)[:, 1, IDX["Forward"]], 0.01)
    climb = np.tile(np.eye(4), (41, 1, 1))
    climb[:, 1, 3] = -np.linspace(0.0, 0.1, 41)  # a level camera rising looks like a nadir camera flying on
    assert estimate_up(climb)[1] == "camera_y"
    windows, facts = plan_video(climb, 30.0, Settings(frames=17, heading_frame=True))
    assert facts["up_source"] == "camera_y" and windows[0]["code"] == "vertical_motion"
    hover = np.tile(np.eye(4), (41, 1, 1))
    assert estimate_up(hover)[1] == "camera_y"


@pytest.mark.parametrize("heading_frame", [False, True])
def test_world_relabelling_changes_nothing(heading_frame):
    rng = np.random.default_rng(0)
    for seed in range(5):
        poses, _ = flight(seed, tilt=20.0)
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation *= np.sign(np.linalg.det(rotation))  # proper rotation
        world = np.eye(4)
        world[:3, :3], world[:3, 3] = rotation, rng.uniform(-0.2, 0.2, 3)
        moved = world @ poses.astype(np.float64)
        assert np.array_equal(poses_to_actions(moved, heading_frame=heading_frame)[:, 0],
                              poses_to_actions(poses, heading_frame=heading_frame)[:, 0])
        assert np.allclose(poses_to_actions(moved, heading_frame=heading_frame),
                           poses_to_actions(poses, heading_frame=heading_frame), atol=2e-5)


@pytest.mark.parametrize("heading_frame", [False, True])
def test_mirrored_trajectory_swaps_left_right_and_yaws(heading_frame):
    normal = np.array([0.6, 0.0, 0.8])  # a vertical mirror plane through the origin, not aligned with the axes
    mirror = np.eye(4)
    mirror[:3, :3] -= 2 * np.outer(normal, normal)
    camera_flip = np.diag([-1.0, 1, 1, 1])  # keeps the camera frame right-handed
    for seed in range(5):
        poses, _ = flight(seed, tilt=10.0)
        mirrored = mirror @ poses.astype(np.float64) @ camera_flip
        got = poses_to_actions(mirrored, heading_frame=heading_frame)
        expected = poses_to_actions(poses, heading_frame=heading_frame)[:, :, MIRROR]
        assert np.array_equal(got[:, 0], expected[:, 0])
        assert np.allclose(got, expected, atol=2e-5)


def test_jitter_below_thresholds_reads_as_hover():
    rng = np.random.default_rng(0)
    poses = np.tile(DroneState().c2w(), (81, 1, 1))
    poses[:, :3, 3] += rng.normal(scale=2e-5, size=(81, 3))
    angle = np.radians(rng.normal(scale=0.02, size=81))
    poses[:, 0, 0], poses[:, 0, 2], poses[:, 2, 0], poses[:, 2, 2] = (np.cos(angle), np.sin(angle),
                                                                      -np.sin(angle), np.cos(angle))
    assert not poses_to_actions(poses).any()


# ---- issue 23: a step where 4 x step is not a whole number ----------------------------------------------------
def straight_flight(speed_per_frame, count, yaw_deg_per_frame=0.0):
    """``(count, 4, 4)`` poses flying forward along +z at a constant speed (and yawing at a constant rate)."""
    poses = np.tile(np.eye(4), (count, 1, 1))
    position = np.zeros(3)
    for i in range(count):
        yaw = np.radians(yaw_deg_per_frame * i)
        poses[i, 0, 0], poses[i, 0, 2], poses[i, 2, 0], poses[i, 2, 2] = (np.cos(yaw), np.sin(yaw), -np.sin(yaw),
                                                                           np.cos(yaw))
        poses[i, :3, 3] = position
        position = position + speed_per_frame * poses[i, :3, 2]  # along the camera's forward axis
    return poses


def test_a_constant_speed_reads_constant_when_4_steps_are_not_whole_frames():
    """25 fps source, 24 fps clips: intervals span 4 or 5 source frames (round(4 x 25/24 x k)); a constant speed of
    0.0025 per source frame must read 4 x 25/24 x 0.0025 = 0.0104 every interval (an inverted spacing factor reads
    0.0096 with a 0.0150 spike every fifth interval)."""
    step = 25 / 24
    poses = straight_flight(0.0025, 60)
    actions = poses_to_actions(poses, step=step, num_steps=12)
    assert sorted(set(np.diff(np.round(4 * step * np.arange(13))).astype(int))) == [4, 5]  # uneven intervals
    np.testing.assert_allclose(actions[:, 1, IDX["Forward"]], 4 * step * 0.0025, rtol=1e-6)
    assert actions[:, 0, IDX["Forward"]].all()


def test_a_constant_yaw_rate_reads_constant_when_4_steps_are_not_whole_frames():
    step = 25 / 24
    actions = poses_to_actions(straight_flight(0.0, 60, yaw_deg_per_frame=0.5), step=step, num_steps=12)
    np.testing.assert_allclose(actions[:, 1, IDX["Yaw Right"]], 4 * step * 0.5, rtol=1e-5)
    assert actions[:, 0, IDX["Yaw Right"]].all() and not actions[:, 0, IDX["Yaw Left"]].any()


def test_median_step_is_the_median_displacement_over_the_spacing_and_0_without_a_pair():
    poses = np.tile(np.eye(4), (6, 1, 1))
    poses[:, 2, 3] = [0.0, 0.1, 0.3, 0.6, 1.0, 1.5]  # displacements 2 frames apart: 0.3, 0.5, 0.7, 0.9
    assert median_step(poses, 2) == pytest.approx(0.6)
    assert median_step(poses[:4], 4) == 0.0  # 4 poses hold no pair 4 frames apart
