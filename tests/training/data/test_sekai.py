"""training.data.sekai: the window checks of the Sekai converter."""
import numpy as np

from models.action_format import constant_actions
from training.data.pose_actions import poses_to_actions
from training.data.sekai import Settings, check_window, plan_video
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
