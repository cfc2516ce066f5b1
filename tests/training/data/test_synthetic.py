"""training.data.synthetic: procedural flights with known actions, rendered, written in the seed's CSV format."""
import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from models.action_format import ACTION_NAMES, constant_actions, parse_actions
from models.media import probe_video, read_video
from training.data.action_stats import compute_action_stats
from training.data.captions import clean_caption
from training.data.scene import make_scene
from training.data.synthetic import (
    MAX_PITCH_DEG,
    ROTATION_RANGE,
    TRANSLATION_RANGE,
    DroneState,
    clamp_pitch,
    fly,
    make_clip,
    make_dataset,
    random_actions,
    render_clip,
    render_flight,
)

IDX = {name: i for i, name in enumerate(ACTION_NAMES)}


def actions_of(*steps):
    """(T, 2, 8) from per-interval dicts {name: magnitude}."""
    return np.concatenate([constant_actions(1, step).numpy() for step in steps]).astype(np.float64)


def test_render_clip_shapes_and_determinism():
    actions = random_actions(8, np.random.default_rng(0))
    video, poses = render_clip(actions, 64, 64, 33, seed=3)
    assert video.shape == (33, 64, 64, 3) and video.dtype == np.uint8
    assert poses.shape == (33, 4, 4)
    again, poses_again = render_clip(actions, 64, 64, 33, seed=3)
    assert np.array_equal(video, again) and np.array_equal(poses, poses_again)
    other, _ = render_clip(actions, 64, 64, 33, seed=4)
    assert np.abs(other.astype(int) - video).mean() > 5  # another world
    assert video.std() > 20  # textured, not a flat colour


def test_frames_change_when_moving_and_not_when_hovering():
    steps = [{}, {}, {"Forward": 0.01}, {"Back": 0.01}, {"Left": 0.01}, {"Right": 0.01}, {"Yaw Left": 1.0},
             {"Yaw Right": 1.0}, {"Pitch Up": 1.0}, {"Pitch Down": 1.0}]
    video, _ = render_clip(actions_of(*steps), 64, 64, 4 * len(steps) + 1, seed=1)
    change = np.abs(np.diff(video.astype(np.float64), axis=0)).mean(axis=(1, 2, 3)).reshape(len(steps), 4)
    assert change[:2].max() == 0.0  # hover: bit-identical frames
    assert change[2:].min() > 0.3, change[2:].min(axis=1)  # every action moves every frame of its interval


def test_poses_units_and_bounds():
    actions = actions_of(*[{"Forward": TRANSLATION_RANGE[1], "Yaw Right": ROTATION_RANGE[1]}] * 20)
    _, poses = render_clip(actions, 32, 32, 81, seed=0)
    assert np.abs(poses[:, :3, 3]).max() <= 1.0
    step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert np.allclose(step, TRANSLATION_RANGE[1] / 4, rtol=1e-9)  # magnitude per interval, a quarter per frame
    rot = poses[:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rot), 1.0)
    assert np.allclose(poses[:, 1, 3], poses[0, 1, 3])  # constant altitude
    heading = [DroneState.from_c2w(p).heading_deg for p in poses[::4]]
    assert np.allclose(np.diff(heading), ROTATION_RANGE[1])  # Yaw Right turns clockwise seen from above


def test_sideways_motion_gives_parallax_and_yaw_does_not():
    base = make_scene(0, ground="snowy plain", objects="red pillars", time="at noon", num_objects=0)
    scene = replace(base, cylinders=np.array([[-0.02, 0.08, 0.004, 0.05], [0.15, 0.6, 0.02, 0.2]], np.float32),
                    cylinder_colors=np.array([[0.9, 0.1, 0.1]] * 2, np.float32),
                    cylinder_bands=np.zeros(2, np.float32))

    def columns(frame):  # mean column of the red pixels in the left (near) and right (far) half
        red = (frame[..., 0] > 120) & (frame[..., 1] < 80)
        cols = np.nonzero(red)[1]
        return cols[cols < 64].mean(), cols[cols >= 64].mean()

    def shifts(step):
        video, _, _ = render_flight(actions_of(step), DroneState(), scene, 128, 128)
        (near0, far0), (near1, far1) = columns(video[0]), columns(video[-1])
        return near1 - near0, far1 - far0

    near, far = shifts({"Right": 0.01})
    assert near < -8 and abs(far) < 3  # near objects slide much more than far ones
    near, far = shifts({"Yaw Right": 2.0})
    assert abs(near - far) < 1.0 and near < -2  # rotation moves everything alike: no parallax


def test_mirrored_actions_fly_a_mirrored_path():
    actions = random_actions(20, np.random.default_rng(5))
    swapped = actions[:, :, [0, 1, 3, 2, 5, 4, 6, 7]]
    poses, _ = fly(actions)
    mirrored, _ = fly(swapped)
    flip = np.diag([-1.0, 1, 1, 1])  # world x -> -x, camera x -> -x
    assert np.allclose(flip @ poses @ flip, mirrored, atol=1e-12)


def test_random_actions_cover_every_action_and_keep_pitch_bounded():
    rng = np.random.default_rng(0)
    clips = [random_actions(20, rng, max_pitch_deg=6.0) for _ in range(60)]
    stacked = np.concatenate(clips)  # (1200, 2, 8)
    active = stacked[:, 0] > 0
    assert active.any(axis=0).all()  # both directions of every action
    assert (~active.any(axis=1)).mean() > 0.03  # hovers
    assert (active[:, IDX["Forward"]] & (active[:, IDX["Yaw Left"]] | active[:, IDX["Yaw Right"]])).sum() > 20
    assert (active[:, IDX["Forward"]] & (active[:, IDX["Pitch Up"]] | active[:, IDX["Pitch Down"]])).sum() > 10
    assert np.array_equal(active, stacked[:, 1] > 0)
    magnitude = stacked[:, 1]
    assert TRANSLATION_RANGE[0] <= magnitude[:, :4][active[:, :4]].min() <= magnitude[:, :4].max() <= 0.015
    assert ROTATION_RANGE[0] <= magnitude[:, 4:][active[:, 4:]].min() <= magnitude[:, 4:].max() <= 2.0
    for clip in clips:
        pitch = np.cumsum(clip[:, 1, IDX["Pitch Up"]] - clip[:, 1, IDX["Pitch Down"]])
        assert np.abs(pitch).max() <= 6.0 + 1e-9
        assert np.array_equal(clamp_pitch(clip, max_pitch_deg=6.0), clip)  # already within bounds: flown as given


def test_speed_scales_the_magnitude_ranges_and_keeps_the_mix():
    slow = np.concatenate([random_actions(20, np.random.default_rng([3, k])) for k in range(20)])
    fast = np.concatenate([random_actions(20, np.random.default_rng([3, k]), speed=5.0) for k in range(20)])
    assert np.array_equal(slow[:, 0, :6], fast[:, 0, :6])  # same segments; pitch turns at its limit sooner
    assert np.array_equal(slow[:, 0, 6:].any(1), fast[:, 0, 6:].any(1))
    held = fast[:, 0] > 0
    assert 5 * TRANSLATION_RANGE[0] <= fast[:, 1, :4][held[:, :4]].min() <= fast[:, 1, :4].max() <= 5 * 0.015
    assert 5 * ROTATION_RANGE[0] <= fast[:, 1, 4:][held[:, 4:]].min() <= fast[:, 1, 4:].max() <= 5 * 2.0
    for bad in (0.0, -1.0, float("nan"), 11.0):
        with pytest.raises(ValueError, match="speed"):
            random_actions(4, np.random.default_rng(0), speed=bad)


def test_move_speed_scales_only_the_translations():
    base = np.concatenate([random_actions(20, np.random.default_rng([4, k]), speed=5.0) for k in range(20)])
    moved = np.concatenate([random_actions(20, np.random.default_rng([4, k]), speed=5.0, move_speed=10.0)
                            for k in range(20)])
    translations = [ACTION_NAMES.index(n) for n in ("Forward", "Back", "Left", "Right")]
    turns = [i for i in range(len(ACTION_NAMES)) if i not in translations]
    assert np.array_equal(moved[:, 0], base[:, 0])  # the same flights: which keys are held is unchanged
    assert np.array_equal(moved[:, 1, turns], base[:, 1, turns])
    assert np.allclose(moved[:, 1, translations], 2.0 * base[:, 1, translations])
    assert base[:, 1, translations].max() > 0
    with pytest.raises(ValueError, match="move_speed"):
        random_actions(4, np.random.default_rng(0), speed=5.0, move_speed=0.0)


def test_clamp_pitch_stops_at_the_limit():
    flown = clamp_pitch(actions_of(*[{"Pitch Up": 2.0}] * 20))
    assert np.isclose(flown[:, 1, IDX["Pitch Up"]].sum(), MAX_PITCH_DEG)
    assert flown[:15, 0, IDX["Pitch Up"]].all() and not flown[15:, 0].any()
    poses, _ = fly(flown)
    assert np.isclose(DroneState.from_c2w(poses[-1]).pitch_deg, MAX_PITCH_DEG)


def test_drone_state_round_trip_and_tilt():
    state = DroneState(0.1, -0.2, 0.03, 40.0, 12.0, 25.0)
    back = DroneState.from_c2w(state.c2w(), tilt_deg=25.0)
    assert np.allclose([back.x, back.z, back.altitude, back.heading_deg, back.pitch_deg],
                       [0.1, -0.2, 0.03, 40.0, 12.0])
    forward = DroneState(tilt_deg=30.0).c2w()[:3, 2]
    assert np.isclose(np.degrees(np.arcsin(forward[1])), 30.0)  # y is down: the camera looks 30 degrees down


def test_make_dataset_writes_the_seed_format(tmp_path):
    rows = make_dataset(tmp_path, clips=2, frames=17, height=64, width=64, fps=24, seed=7)
    with open(tmp_path / "metadata.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["video"] for r in read] == [r["video"] for r in rows] == ["videos/clip_00000.mp4",
                                                                        "videos/clip_00001.mp4"]
    for row in read:
        raw = parse_actions(row["action"])  # (1, T, 2, 8)
        assert raw.shape == (1, 4, 2, 8)
        assert raw[0, :, 0].bool().equal(raw[0, :, 1] > 0)
        assert clean_caption(row["prompt"]).lower() == row["prompt"].lower()  # no camera-motion words
        assert row["prompt"].startswith("a drone flies over")
        info = probe_video(tmp_path / row["video"])
        assert (info["frames"], info["width"], info["height"], info["fps"]) == (17, 64, 64, 24.0)
        assert read_video(tmp_path / row["video"]).shape == (17, 64, 64, 3)
        pose = np.load(tmp_path / row["video"].replace("videos", "poses").replace(".mp4", ".npz"))
        assert pose["extrinsic"].shape == (17, 4, 4) and pose["intrinsic"].shape == (3, 3)
        assert np.abs(pose["extrinsic"][:, :3, 3]).max() <= 1.0
    assert make_clip(tmp_path / "again", 1, 17, 64, 64, 24, seed=7) == rows[1]  # deterministic per seed and clip
    assert read_video(tmp_path / "again" / rows[1]["video"]).tobytes() == \
        read_video(tmp_path / rows[1]["video"]).tobytes()
    stats = json.loads((tmp_path / "action_stats.json").read_text())
    assert stats == json.loads(json.dumps(compute_action_stats([json.loads(r["action"]) for r in rows])))
    assert json.loads((tmp_path / "metadata.json").read_text())["motion_frame"] == "heading"


def test_bad_actions_are_rejected():
    with pytest.raises(ValueError, match="actions"):
        render_clip(np.zeros((4, 8)), 32, 32, 17, seed=0)
    with pytest.raises(ValueError, match="frames"):
        render_clip(np.zeros((4, 2, 8)), 32, 32, 21, seed=0)
