"""training.data.sekai: the window checks of the Sekai converter."""
import numpy as np
import pytest

from models.action_format import constant_actions
from training.data.pose_actions import poses_to_actions
from training.data.sekai import Reject, Settings, check_window, plan_video
from training.data.synthetic import fly


def test_window_checks_name_vertical_motion_roll_and_static():
    settings = Settings(frames=17, fps=24)
    climb = np.tile(np.eye(4), (21, 1, 1))
    climb[:, 1, 3] = -np.linspace(0, 0.05, 21)  # y is down: rising
    hover = np.tile(np.eye(4), (21, 1, 1))
    roll = np.tile(np.eye(4), (21, 1, 1))
    angle = np.radians(np.linspace(0, 10, 21))
    roll[:, 0, 0], roll[:, 0, 1], roll[:, 1, 0], roll[:, 1, 1] = np.cos(angle), -np.sin(angle), np.sin(angle), \
        np.cos(angle)
    for poses, code in ((climb, "vertical_motion"), (roll, "roll"), (hover, "static")):
        windows, _ = plan_video(poses, 30.0, settings)
        assert [w["code"] for w in windows] == [code]
    forward = fly(constant_actions(4, {"Forward": 0.01}).numpy())[0]
    assert check_window({"forward": np.full(4, 0.01), "right": np.zeros(4), "down": np.zeros(4),
                         "yaw": np.zeros(4), "pitch": np.zeros(4), "roll": np.zeros(4)},
                        poses_to_actions(forward), 1e-3, 0.25) is None


def _forward_flight(intervals: int) -> np.ndarray:
    """Camera-to-world poses of a level forward-and-yaw flight, one pose per source frame (fly's own 4 per action)."""
    actions = constant_actions(intervals, {"Forward": 0.01, "Yaw Right": 1.0}).numpy()
    return fly(actions)[0]  # (4 * intervals + 1, 4, 4)


def test_a_pose_flip_rejects_its_windows_and_the_limits_are_reported():
    poses = _forward_flight(20)  # 81 poses: 4 windows of 17 frames at 24 fps from 24 fps poses
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # 180 degrees about the camera's y axis: an Euler-angle artefact
    broken = poses.copy()
    broken[50] = broken[50] @ flip
    settings = Settings(frames=17, fps=24)
    windows, facts = plan_video(broken, 24.0, settings)
    codes = [w["code"] for w in windows]
    assert codes.count("implausible_motion") == 1 and codes.count(None) == len(codes) - 1
    bad = windows[codes.index("implausible_motion")]
    assert bad["start"] <= 50 <= bad["start"] + 16 and "over the clip's limit" in bad["detail"]
    assert 1.0 < facts["rotation_limit_deg"] <= 45.0 and 0 < facts["translation_limit"] <= 0.25
    clean_windows, clean_facts = plan_video(poses, 24.0, settings)
    assert all(w["code"] is None for w in clean_windows)
    assert clean_facts["rotation_limit_deg"] == pytest.approx(8.0, rel=1e-6)  # 8 x the clip's 1-degree turns
    jump = poses.copy()
    jump[60:, 0, 3] += 0.5  # the tracker jumps half the scene sideways
    assert "implausible_motion" in [w["code"] for w in plan_video(jump, 24.0, settings)[0]]


def test_heading_frame_refuses_a_camera_looking_straight_down():
    down = _forward_flight(20)
    tilt = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # camera z (forward) turned to world +y (down)
    down[:, :3, :3] = down[:, :3, :3] @ tilt
    with pytest.raises(Reject) as refused:
        plan_video(down, 24.0, Settings(frames=17, fps=24, heading_frame=True))
    assert refused.value.code == "tilt_near_vertical" and "without --heading_frame" in refused.value.detail
    windows, _ = plan_video(down, 24.0, Settings(frames=17, fps=24))  # the camera frame is fine with it
    assert windows
