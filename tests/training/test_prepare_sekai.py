"""training.prepare_sekai / pose_actions / captions / action_stats: Sekai poses -> actions, checked on synthetic
flights whose actions are known."""
import csv
import json
import shutil

import numpy as np
import pytest

from models.action_format import ACTION_NAMES, constant_actions, parse_actions
from training.action_stats import compute_action_stats
from training.captions import clean_caption
from training.pose_actions import estimate_up, poses_to_actions
from training.prepare_sekai import Settings, check_window, main, plan_video
from training.synthetic import DroneState, fly, random_actions, render_flight
from training.video_io import probe_video, write_mp4

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


def test_caption_cleaning_removes_camera_motion():
    captions = ["The camera slowly moves forward through a forest, then turns left toward a wooden bridge.",
                "A drone flies over a river at sunset. The camera pans to the right, revealing tall buildings.",
                "The drone is flying backward over snowy mountains while the camera tilts down to the valley.",
                "Aerial tracking shot of a coastal town; the view rises above the rooftops.",
                "A busy street with cars, with smooth forward movement along the road."]
    banned = ("forward", "backward", "left", "right", "pan", "tilt", "turn", "rise", "tracking", "camera")
    for caption in captions:
        cleaned = clean_caption(caption)
        assert not [word for word in banned if word in cleaned.lower()], cleaned
    assert clean_caption(captions[0]) == "Through a forest toward a wooden bridge."
    assert clean_caption("A drone flies over a green field with red pillars at dusk") == \
        "A drone flies over a green field with red pillars at dusk"


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


def make_sekai(root, frames=41, fps=30):
    """A tiny Sekai-like folder: one good flight, one hover, and one copy per kind of damage."""
    (root / "videos").mkdir(parents=True)
    (root / "poses").mkdir()
    scene_seed = 3
    good = constant_actions(10, {"Forward": 0.01}).numpy()
    video, poses, _ = render_flight(good, DroneState(), scene_seed, 64, 64)
    hover_video, hover_poses, _ = render_flight(np.zeros((10, 2, 8)), DroneState(), scene_seed, 64, 64)
    write_mp4(root / "videos" / "good_0_41.mp4", video, fps)
    write_mp4(root / "videos" / "hover_0_41.mp4", hover_video, fps)
    cases = {"good_0_41": poses, "hover_0_41": hover_poses, "nopose_0_41": None, "short_0_41": poses[:-3],
             "nan_0_41": np.where(np.arange(41)[:, None, None] == 7, np.nan, poses), "far_0_41": poses * 30,
             "garbage_0_41": poses, "badnpz_0_41": "not an npz"}
    for stem, value in cases.items():
        if stem not in ("good_0_41", "hover_0_41"):
            shutil.copy(root / "videos" / "good_0_41.mp4", root / "videos" / f"{stem}.mp4")
        if isinstance(value, np.ndarray):
            np.savez(root / "poses" / f"{stem}.npz", extrinsic=value.astype(np.float32), intrinsic=np.eye(3))
        elif isinstance(value, str):
            (root / "poses" / f"{stem}.npz").write_text(value)
    (root / "videos" / "garbage_0_41.mp4").write_bytes(b"\x00not a video" * 100)
    with open(root / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["videoFile", "caption"])
        writer.writerow(["videos/good_0_41.mp4", "The camera moves forward over a checkered field."])
    return root


def test_cli_converts_good_clips_and_reports_every_bad_one(tmp_path, capsys):
    src = make_sekai(tmp_path / "sekai")
    out = tmp_path / "out"
    assert main(["--videos", str(src / "videos"), "--poses", str(src / "poses"), "--captions",
                 str(src / "captions.csv"), "--out", str(out), "--frames", "17", "--fps", "24"]) == 0
    report = json.loads((out / "report.json").read_text())
    codes = {entry["video"]: entry["code"] for entry in report["videos"]}
    assert codes == {"badnpz_0_41.mp4": "bad_pose_file", "far_0_41.mp4": "poses_out_of_range",
                     "garbage_0_41.mp4": "unreadable_video", "good_0_41.mp4": None,
                     "hover_0_41.mp4": "no_windows", "nan_0_41.mp4": "nan_poses",
                     "nopose_0_41.mp4": "missing_pose_file", "short_0_41.mp4": "pose_count_mismatch"}
    hover = next(e for e in report["videos"] if e["video"] == "hover_0_41.mp4")
    assert [w["code"] for w in hover["windows"]] == ["static"]
    assert report["totals"]["windows_ok"] == 1 and report["totals"]["videos_rejected"] == 7
    summary = (out / "summary.md").read_text()
    assert all(name in summary for name in codes if name != "good_0_41.mp4")
    with open(out / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["prompt"] == "Over a checkered field."
    raw = parse_actions(rows[0]["action"])[0].numpy()  # (4, 2, 8)
    # 30 -> 24 fps: one clip interval spans 5 source frames, so 0.01 per 4 source frames reads as 0.0125.
    assert np.array_equal(raw[:, 0], np.tile(np.eye(8)[IDX["Forward"]], (4, 1)))
    assert np.allclose(raw[:, 1, IDX["Forward"]], 0.0125, rtol=0.01)
    info = probe_video(out / rows[0]["video"])
    assert (info["frames"], info["fps"], info["width"]) == (17, 24.0, 64)
    assert json.loads((out / "metadata.json").read_text())["heading_frame"] is False
    assert json.loads((out / "action_stats.json").read_text())["actions"]["Forward"]["count"] == 4
    assert (out / "action_hist.png").stat().st_size > 1000
    assert "1 clips from 1/8 videos" in capsys.readouterr().out


def test_cli_raw_captions_heading_frame_and_user_errors(tmp_path, capsys):
    src = make_sekai(tmp_path / "sekai")
    out = tmp_path / "out"
    args = ["--videos", str(src / "videos"), "--poses", str(src / "poses"), "--captions", str(src / "captions.csv"),
            "--out", str(out), "--frames", "9", "--fps", "24", "--stride", "10"]
    assert main(args + ["--raw_captions", "--heading_frame", "--height", "32", "--width", "48"]) == 0
    with open(out / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and rows[0]["prompt"] == "The camera moves forward over a checkered field."
    assert probe_video(out / rows[0]["video"])["width"] == 48
    assert json.loads((out / "metadata.json").read_text())["motion_frame"] == "heading"
    capsys.readouterr()
    assert main(args[:-4] + ["--frames", "10"]) == 2
    assert main(args[:2] + ["--poses", str(tmp_path / "missing"), *args[4:]]) == 2
    err = capsys.readouterr().err
    assert "num_frames" in err and "poses" in err and "Traceback" not in err
