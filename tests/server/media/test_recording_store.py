"""server.media.recording, the parts around the writer: the listing entry, what counts as finished, pruning,
temporary names, the stale-folder sweep (with a concurrent remover), recovery's order, leftovers and log lines."""
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import server.media.recording as recording
from models.media import LIVE_CRF, LIVE_PRESET, PART_ACTIONS
from server.media.recording import (
    OWNER_LOCK,
    FileStore,
    FlightRecorder,
    atomic_write_text,
    finish,
    list_recordings,
    recording_summary,
    recover_recordings,
    remove_stale_folders,
    try_lock,
)
from tests.server.media.test_recording import META, chunk, frames


def touch(path: Path, mtime: float, text: str = "{}") -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_a_summary_lists_every_field_and_defaults_the_missing_ones():
    record = {"frames": 9, "actions": [[0]] * 2, "chunks": [{}, {}, {}], "fps": 16, "started": 1.5,
              "duration_s": 2.25, "prompt": "hills", "world": "toy", "generation": "causal", "truncated": 1,
              "cut_off": 0}
    assert recording_summary(record, "flight-0001") == {
        "id": "flight-0001", "video": "/recordings/flight-0001.mp4", "actions": "/recordings/flight-0001.json",
        "frames": 9, "steps": 2, "chunks": 3, "fps": 16, "started": 1.5, "duration_s": 2.25, "prompt": "hills",
        "world": "toy", "generation": "causal", "truncated": True, "cut_off": False}
    assert recording_summary({}, "flight-0002") == {
        "id": "flight-0002", "video": "/recordings/flight-0002.mp4", "actions": "/recordings/flight-0002.json",
        "frames": None, "steps": 0, "chunks": 0, "fps": None, "started": None, "duration_s": None, "prompt": None,
        "world": None, "generation": None, "truncated": False, "cut_off": False}


def test_finished_ids_newest_first_skip_parts_temporaries_and_strangers(tmp_path):
    touch(tmp_path / "aaaaaaaa.json", 3000)  # newest, though first by name
    touch(tmp_path / "zzzzzzzz.mp4", 2000)
    touch(tmp_path / "zzzzzzzz.json", 1000)  # the newest file of an id dates it
    touch(tmp_path / "mmmmmmmm.json", 1500)
    touch(tmp_path / "onlymp4x.mp4", 1200)  # a video alone is finished too
    for i in range(4):  # whichever of an id's files the listing meets last, the newest dates it
        touch(tmp_path / f"mp4new{i:02d}.mp4", 500 + i)
        touch(tmp_path / f"mp4new{i:02d}.json", 100 + i)
        touch(tmp_path / f"jsonnew{i:02d}.json", 600 + i)
        touch(tmp_path / f"jsonnew{i:02d}.mp4", 200 + i)
    for i in range(6):  # ids being written, or cut mid-rename, and files that are not ours
        touch(tmp_path / f"busy{i:04d}.mp4", 4000)
        touch(tmp_path / f"busy{i:04d}.part.ts", 4000)
        touch(tmp_path / f"temp{i:04d}.json", 4000)
        touch(tmp_path / f"temp{i:04d}.tmp.json", 4000)
        touch(tmp_path / f"bad!{i:04d}.json", 4000)
        touch(tmp_path / f"other{i:04d}.txt", 4000)
    assert FileStore(tmp_path).finished_ids() == (
        ["aaaaaaaa", "zzzzzzzz", "mmmmmmmm", "onlymp4x"] + [f"jsonnew{i:02d}" for i in (3, 2, 1, 0)]
        + [f"mp4new{i:02d}" for i in (3, 2, 1, 0)])


def test_a_file_vanishing_during_the_listing_drops_only_that_id(tmp_path, monkeypatch):
    for i in range(6):
        touch(tmp_path / f"item{i:04d}.json", 1000 + i)
    real_stat = Path.stat

    def stat(path, *args, **kwargs):
        if path.name in ("item0001.json", "item0004.json"):
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(Path, "stat", stat)
    assert FileStore(tmp_path).finished_ids() == ["item0005", "item0003", "item0002", "item0000"]


def test_adding_an_id_spares_it_from_pruning(tmp_path):
    for i in range(3):
        touch(tmp_path / f"older{i:03d}.json", 2000 + i)
    touch(tmp_path / "again001.json", 1000)  # the id being added again is the oldest
    store = FileStore(tmp_path, keep=2)
    store.add("again001")
    assert store.finished_ids() == ["older002", "again001"]
    with pytest.raises(ValueError, match="is not a valid id"):
        store.add("x")


def test_temporary_names_mark_a_write_in_progress(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(recording.os, "replace", lambda a, b: renames.append((Path(a).name, Path(b).name)) or
                        real_replace(a, b))
    atomic_write_text(tmp_path / "flight-0001.json", "{}")
    atomic_write_text(tmp_path / "flight-0002.v1.json", "{}")
    assert renames == [("flight-0001.tmp.json", "flight-0001.json"), ("flight-0002.tmp.v1.json", "flight-0002.v1.json")]
    store = FileStore(tmp_path)
    recorder = FlightRecorder(store, "flight-0003", 8, META, max_frames=100)
    recorder.add(chunk(0, 1), frames(5))
    renames.clear()
    recorder.close()
    assert renames[0] == ("flight-0003.tmp.mp4", "flight-0003.mp4")


def test_the_recorder_header_and_encoder_settings(tmp_path, monkeypatch):
    made = []
    real_writer = recording.LiveTsWriter
    monkeypatch.setattr(recording, "LiveTsWriter", lambda *a, **k: made.append(k) or real_writer(*a, **k))
    recorder = FlightRecorder(FileStore(tmp_path), "flight-0004", 8, META, max_frames=5)
    assert made == [{"crf": LIVE_CRF, "preset": LIVE_PRESET}]
    assert recorder.meta == {**META, "fps": 8, "started": round(recorder.started, 3)}
    recorder.add(chunk(0, 2), frames(9))  # 9 frames, room for 5: one whole step
    record = json.loads((tmp_path / "flight-0004.part.jsonl").read_text().splitlines()[1])
    assert record["truncated"] is True and record["frames"] == 5 and len(record["actions"]) == 1
    recorder.close()


def make_stale(root: Path, count: int, prefix="wanfly-test-") -> list[Path]:
    folders = [Path(tempfile.mkdtemp(prefix=prefix, dir=root)) for _ in range(count)]
    for folder in folders:
        (folder / OWNER_LOCK).touch()
    return folders


def test_the_sweep_skips_what_it_must_and_counts_every_removal(tmp_path, caplog):
    for i in range(4):
        (tmp_path / f"wanfly-test-file{i}").write_text("a file, not a folder")
        Path(tempfile.mkdtemp(prefix="wanfly-test-", dir=tmp_path))  # no lock file: left alone
    alive = make_stale(tmp_path, 4)
    holders = [try_lock(folder / OWNER_LOCK) for folder in alive]
    stale = make_stale(tmp_path, 4)
    with caplog.at_level(logging.INFO, logger="wanfly.recording"):
        assert remove_stale_folders("wanfly-test-", root=tmp_path) == 4
    assert not any(folder.exists() for folder in stale) and all(folder.exists() for folder in alive)
    assert [r.getMessage() for r in caplog.records] == [
        "removed 4 stale wanfly-test-* folder(s) of processes that are gone"]
    for holder in holders:
        holder.close()


def test_a_folder_removed_meanwhile_by_another_server_is_no_error(tmp_path, monkeypatch):
    (stale,) = make_stale(tmp_path, 1)
    real_try_lock = recording.try_lock

    def locked_then_removed(path):
        handle = real_try_lock(path)
        shutil.rmtree(stale)  # the other server's sweep wins the race
        return handle
    monkeypatch.setattr(recording, "try_lock", locked_then_removed)
    assert remove_stale_folders("wanfly-test-", root=tmp_path) == 1


def test_closing_a_temporary_store_twice_or_after_its_folder_went_is_fine(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = FileStore(None, prefix="wanfly-jobs-")
    shutil.rmtree(store.folder)
    store.close()
    store.close()
    assert store._owner is None


def dead_recording(store: FileStore, item_id: str, steps: int) -> None:
    """A recording whose process died after ``steps`` one-step chunks (its lock went with it)."""
    recorder = FlightRecorder(store, item_id, 8, META, max_frames=100)
    for i in range(steps):
        recorder.add(chunk(i, 1), frames(5 if i == 0 else 4, 4 * i + int(i > 0)))
    recorder.video.close()
    recorder._log.close()


def test_recovery_goes_past_bad_live_and_failed_parts_and_logs_each(tmp_path, caplog):
    store = FileStore(tmp_path)
    (tmp_path / ("bad!name" + PART_ACTIONS)).write_text("{}\n")  # not an id: left alone
    live = FlightRecorder(store, "flight-a-live", 8, META, max_frames=100)  # sorted before the dead ones
    (tmp_path / ("flight-b-broken" + PART_ACTIONS)).write_text("not a header\n")
    dead_recording(store, "flight-c-empty", 0)
    (tmp_path / "flight-c-empty.tmp.mp4").write_text("a copy cut by the kill")  # leftovers go with the parts
    (tmp_path / "flight-c-empty.tmp.json").write_text("{")
    dead_recording(store, "flight-d-dead", 2)
    (tmp_path / "flight-d-dead.tmp.mp4").write_text("a copy cut by the kill")
    (tmp_path / "flight-d-dead.tmp.json").write_text("{")
    with caplog.at_level(logging.INFO, logger="wanfly.recording"):
        assert recover_recordings(store) == ["flight-d-dead"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("recording flight-b-broken was cut off and cannot be recovered: ")
    assert messages[0].endswith("no header line (the recording was cut off before it began)")
    assert messages[1:] == [
        "recording flight-c-empty was cut off before its first whole step; removed",
        "recording flight-d-dead was cut off: recovered 9 frames, 2 action steps (the video held 9 whole frames)"]
    assert (tmp_path / ("flight-a-live" + PART_ACTIONS)).is_file()  # still being written
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("flight-a-live"))
    assert names == sorted(["bad!name" + PART_ACTIONS, "flight-b-broken" + PART_ACTIONS,  # a failed part stays
                            "flight-d-dead.json", "flight-d-dead.mp4"])
    live.close()


def test_a_finished_recording_whose_parts_stayed_is_only_tidied(tmp_path):
    store = FileStore(tmp_path)
    dead_recording(store, "flight-0005", 1)
    finished = {"frames": 5, "cut_off": False, "actions": [[0]]}
    (tmp_path / "flight-0005.json").write_text(json.dumps(finished))  # it crashed after the rename, before cleanup
    assert recover_recordings(store) == []
    assert json.loads((tmp_path / "flight-0005.json").read_text()) == finished
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flight-0005.json"]


def test_the_listing_needs_both_files_and_skips_unreadable_ones(tmp_path):
    store = FileStore(tmp_path)
    touch(tmp_path / "good0001.json", 1000, json.dumps({"frames": 5}))
    touch(tmp_path / "good0001.mp4", 1000, "")
    touch(tmp_path / "nomp4001.json", 3000, json.dumps({"frames": 5}))  # newest: its video is missing
    touch(tmp_path / "broken01.json", 2500, "{")
    touch(tmp_path / "broken01.mp4", 2500, "")
    touch(tmp_path / "list0001.json", 2000, "[]")  # not a record
    touch(tmp_path / "list0001.mp4", 2000, "")
    assert [e["id"] for e in list_recordings(store)] == ["good0001"]


def test_finish_without_frames_writes_only_the_json(tmp_path):
    store = FileStore(tmp_path)
    finish(store, "flight-0006", {"frames": 0, "actions": []})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flight-0006.json"]
