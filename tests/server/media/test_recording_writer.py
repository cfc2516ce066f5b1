"""server.media.recording: a flight recording's mp4 and JSON agree (frames = 1 + 4 x steps, chunks in flight order,
the flight-level actions their concatenation in that order), a cut at max_frames keeps whole steps, the file store
keeps the newest ids and refuses bad ones, job videos are real mp4 files."""
import json

import numpy as np
import pytest

from models import media
from models.media import probe_video, read_video
from server.media import recording
from server.media.recording import FileStore, FlightRecorder, write_mp4

H, W = 16, 16


def chunk(index, steps, first):
    """(meta, frames) of a chunk of ``steps`` action steps; action step s of chunk i has magnitude 10 i + s."""
    actions = np.zeros((steps, 2, 8))
    actions[:, 0, 0] = 1
    actions[:, 1, 0] = 10 * index + np.arange(steps)
    frames = 4 * steps + int(first)
    pixels = np.full((frames, H, W, 3), 40 * index, np.uint8)  # (F, H, W, 3)
    return {"index": index, "frames": frames, "actions": actions.tolist(), "gen_ms": 1.0}, pixels


def record(tmp_path, chunks, max_frames=1000, store=None):
    store = store or FileStore(tmp_path)
    recorder = FlightRecorder(store, "flight-0001", 8, {"prompt": "p", "seed": 3}, max_frames=max_frames)
    for index, steps in enumerate(chunks):
        recorder.add(*chunk(index, steps, index == 0))
    info = recorder.close()
    return info, json.loads((tmp_path / "flight-0001.json").read_text()), tmp_path / "flight-0001.mp4"


def test_flight_actions_are_the_chunks_actions_in_flight_order(tmp_path):
    info, data, video = record(tmp_path, [2, 2, 1])
    assert info == {"id": "flight-0001", "frames": 21, "chunks": 3, "truncated": False}
    assert [c["index"] for c in data["chunks"]] == [0, 1, 2]
    forward = [step[1][0] for step in data["actions"]]  # the flight's (T, 2, 8): magnitude of Forward per step
    assert forward == [0, 1, 10, 11, 20]
    assert np.array(data["actions"]).shape == (5, 2, 8) and data["frames"] == 21 == 1 + 4 * 5
    assert (data["prompt"], data["seed"], data["fps"], data["truncated"]) == ("p", 3, 8, False)
    assert probe_video(video)["frames"] == 21
    means = read_video(video).reshape(21, -1).mean(axis=1)  # chunk i's frames are grey 40 i (H.264: roughly)
    np.testing.assert_allclose(means, [0] * 9 + [40] * 8 + [80] * 4, atol=3)


@pytest.mark.parametrize("chunks, max_frames, frames, steps", [
    ([2, 2, 2], 14, 13, 3), ([2, 2, 2], 9, 9, 2), ([2, 2, 2], 8, 5, 1), ([2, 2, 2], 12, 9, 2), ([3], 10, 9, 2)])
def test_a_cut_at_max_frames_keeps_whole_steps(tmp_path, chunks, max_frames, frames, steps):
    info, data, video = record(tmp_path, chunks, max_frames=max_frames)
    assert info["truncated"] and data["truncated"]
    assert (info["frames"], data["frames"], len(data["actions"])) == (frames, frames, steps)
    assert frames == 1 + 4 * steps and probe_video(video)["frames"] == frames
    assert sum(c["frames"] for c in data["chunks"]) == frames
    assert sum(len(c["actions"]) for c in data["chunks"]) == steps
    assert info["chunks"] == len(data["chunks"]) and all(c["frames"] > 0 for c in data["chunks"])


def test_a_flight_that_just_fits_is_not_truncated(tmp_path):
    info, data, _ = record(tmp_path, [2, 2], max_frames=17)
    assert (info["frames"], info["truncated"], data["truncated"]) == (17, False, False)


def test_a_cut_before_any_whole_step_records_frame_zero_only(tmp_path):
    info, data, _ = record(tmp_path, [2], max_frames=4)
    assert (info["frames"], data["actions"], data["chunks"][0]["frames"]) == (1, [], 1)


def test_file_store_keeps_the_newest_ids_and_refuses_bad_ones(tmp_path):
    store = FileStore(tmp_path, keep=2)
    for item in ("aaaaaaaa", "bbbbbbbb", "cccccccc"):
        store.add(item)
        store.path(item, ".json").write_text("{}")
    assert store.find("aaaaaaaa", ".json") is None  # the oldest lost its files
    assert store.find("bbbbbbbb", ".json") == tmp_path / "bbbbbbbb.json"
    assert store.find("cccccccc", ".mp4") is None  # no such file
    assert store.find("../etc/passwd", ".json") is None
    with pytest.raises(ValueError, match="^id: "):
        store.path("short", ".mp4")
    temporary = FileStore(None)
    folder = temporary.folder
    assert folder.is_dir() and folder.name.startswith("wanfly-")
    temporary.close()
    assert not folder.exists()
    nested = FileStore(tmp_path / "a" / "b")  # made with its parents; a given folder outlives close()
    nested.close()
    assert nested.folder.is_dir()


def test_file_store_keeps_16_ids_by_default_and_recordings_count(tmp_path):
    store = FileStore(tmp_path)
    for i in range(17):
        store.add(f"item-{i:04d}")
        store.path(f"item-{i:04d}", ".json").write_text("{}")
    assert store.find("item-0000", ".json") is None and store.find("item-0001", ".json") is not None
    small = FileStore(tmp_path / "small", keep=1)
    record(small.folder, [1], store=small)
    FlightRecorder(small, "flight-0002", 8, {}, max_frames=100).close()  # the newer flight evicts the first
    assert sorted(p.name for p in small.folder.iterdir()) == ["flight-0002.json"]  # no frames: no mp4


def test_duration_is_in_seconds_to_the_millisecond(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(recording.time, "time", lambda: now[0])
    recorder = FlightRecorder(FileStore(tmp_path), "flight-0003", 8, {}, max_frames=100)
    now[0] = 101.23456
    recorder.close()
    assert json.loads((tmp_path / "flight-0003.json").read_text())["duration_s"] == 1.235


def test_job_video_is_a_real_mp4_encoded_for_speed(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)  # (F, H, W, 3)
    write_mp4(tmp_path / "job.mp4", frames, 8)
    info = probe_video(tmp_path / "job.mp4")
    assert (info["frames"], info["width"], info["height"]) == (9, 64, 64) and info["fps"] == pytest.approx(8)
    media.write_mp4(tmp_path / "live.mp4", frames, 8, crf=media.LIVE_CRF, preset=media.LIVE_PRESET)
    assert (tmp_path / "job.mp4").read_bytes() == (tmp_path / "live.mp4").read_bytes()  # the live settings
    recorder = FlightRecorder(FileStore(tmp_path), "flight-0004", 8, {}, max_frames=100)
    recorder.add({"index": 0, "frames": 9, "actions": [[[0] * 8] * 2] * 2, "gen_ms": 1.0}, frames)
    recorder.close()
    # a flight's mp4 is remuxed from its live MPEG-TS part (issue 19): every frame there, at the flight's size
    assert read_video(tmp_path / "flight-0004.mp4").shape == (9, 64, 64, 3)
