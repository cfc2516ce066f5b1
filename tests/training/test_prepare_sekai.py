"""python -m training.prepare_sekai on a small Sekai-style folder: clips, CSV, report, user errors."""
import csv
import json
import shutil

import numpy as np

from models.action_format import ACTION_NAMES, constant_actions, parse_actions
from models.media import probe_video, write_mp4
from training.data.synthetic import DroneState, fly, random_actions, render_flight
from training.prepare_sekai import main

IDX = {name: i for i, name in enumerate(ACTION_NAMES)}


def flight(seed, tilt=0.0, max_pitch=30.0, steps=20):
    """(poses float32 like Sekai files, flown actions) of a random flight from a random start."""
    rng = np.random.default_rng(seed)
    start = DroneState(*rng.uniform(-0.3, 0.3, 2), 0.03, rng.uniform(-180, 180), 0.0, tilt)
    poses, flown = fly(random_actions(steps, rng, max_pitch_deg=max_pitch), start)
    return poses.astype(np.float32), flown


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
