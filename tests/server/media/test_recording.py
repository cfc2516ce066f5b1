"""server.media.recording (and the recording format of models.media): a finished recording is an mp4 + JSON with the
same frames and steps; a recording whose writer was killed (the server and its ffmpeg, SIGKILL) is readable and
consistent up to its last whole step, and the next server finishes it as cut off; the file store's retention counts
what is on disk; temporary folders of processes that are gone are removed."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import psutil
import pytest

from models.media import LiveTsWriter, count_whole_frames, read_recording_part
from server.media.recording import (
    OWNER_LOCK,
    FileStore,
    FlightRecorder,
    list_recordings,
    recover_recordings,
    remove_stale_folders,
    try_lock,
)

ROOT = Path(__file__).resolve().parents[3]
META = {"prompt": "hills", "seed": 1, "steps": 2, "generation": "causal"}


def frames(count: int, start: int = 0) -> np.ndarray:
    """Distinct frames (a moving gradient), (count, 64, 64, 3) uint8."""
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([np.stack([(x + 5 * i) % 256, (y + 3 * i) % 256, (x * y // 16 + i) % 256], -1)
                     for i in range(start, start + count)]).astype(np.uint8)


def chunk(index: int, steps: int) -> dict:
    return {"index": index, "frames": int(index == 0) + 4 * steps, "gen_ms": 1.0,
            "actions": [[[1.0] + [0.0] * 7, [0.01] + [0.0] * 7]] * steps}


def decoded_frames(path) -> int:
    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


def test_a_finished_recording_is_an_mp4_and_a_json_of_the_same_steps(tmp_path):
    store = FileStore(tmp_path, keep=4)
    recorder = FlightRecorder(store, "flight-0001", 8, META, max_frames=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flight-0001.part.jsonl"]  # the video starts with a frame
    recorder.add(chunk(0, 1), frames(5))
    recorder.add(chunk(1, 1), frames(4, 5))
    info = recorder.close()
    assert info == {"id": "flight-0001", "frames": 9, "chunks": 2, "truncated": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flight-0001.json", "flight-0001.mp4"]
    record = json.loads((tmp_path / "flight-0001.json").read_text())
    assert (record["frames"], len(record["actions"]), record["cut_off"], record["fps"]) == (9, 2, False, 8)
    assert record["prompt"] == "hills" and record["generation"] == "causal"
    assert decoded_frames(tmp_path / "flight-0001.mp4") == 9
    [entry] = list_recordings(store)
    assert (entry["id"], entry["frames"], entry["steps"], entry["cut_off"]) == ("flight-0001", 9, 2, False)
    assert entry["video"] == "/recordings/flight-0001.mp4"


def test_the_frame_limit_cuts_frames_and_steps_alike(tmp_path):
    recorder = FlightRecorder(FileStore(tmp_path), "flight-0002", 8, META, max_frames=11)
    recorder.add(chunk(0, 2), frames(9))
    recorder.add(chunk(1, 2), frames(8, 9))  # room for 2 frames: none is a whole step
    assert recorder.close() == {"id": "flight-0002", "frames": 9, "chunks": 1, "truncated": True}


def test_a_video_cut_at_any_byte_keeps_its_whole_frames(tmp_path):
    """MPEG-TS cut in the middle of a frame: that frame does not count (it would decode half-broken)."""
    writer = LiveTsWriter(tmp_path / "a.ts", 8)
    writer.write_frames(frames(21))
    writer.close()
    data = (tmp_path / "a.ts").read_bytes()
    assert count_whole_frames(tmp_path / "a.ts") == 21
    for cut in np.random.default_rng(0).integers(0, len(data), 12):
        (tmp_path / "b.ts").write_bytes(data[:cut])
        whole = count_whole_frames(tmp_path / "b.ts")
        check = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "b.ts"))[0] if whole else 0
        assert whole <= check <= whole + 1 and whole < 21, (cut, whole, check)


KILLED_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.server.media.test_recording import META, chunk, frames
from server.media.recording import FileStore, FlightRecorder
recorder = FlightRecorder(FileStore({folder!r}), "flight-0003", 8, META, max_frames=1000)
recorder.add(chunk(0, 2), frames(9))
for index in range(1, 6):
    recorder.add(chunk(index, 1), frames(4, 5 + 4 * index))
print("written", flush=True)
time.sleep(60)
"""


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (``docker kill``: the server and its ffmpeg die together)."""
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)


def test_a_recording_killed_with_its_encoder_is_read_then_finished_as_cut_off(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(root=str(ROOT), folder=str(tmp_path))],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert writer.stdout.readline().strip() == "written"
    time.sleep(0.3)  # the encoder has the last frames
    kill_tree(writer.pid)
    writer.wait()
    assert (tmp_path / "flight-0003.part.jsonl").is_file() and not (tmp_path / "flight-0003.json").exists()
    record = read_recording_part(tmp_path / "flight-0003.part.jsonl")
    steps = len(record["actions"])
    assert record["frames"] == 1 + 4 * steps and record["cut_off"] is True
    assert 6 <= steps <= 7 and record["video_frames"] >= record["frames"]  # 7 written; the last frame may be lost

    store = FileStore(tmp_path)
    assert recover_recordings(store) == ["flight-0003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flight-0003.json", "flight-0003.mp4"]
    finished = json.loads((tmp_path / "flight-0003.json").read_text())
    assert finished["cut_off"] is True and finished["frames"] == 1 + 4 * len(finished["actions"])
    assert decoded_frames(tmp_path / "flight-0003.mp4") == finished["frames"]
    assert [c["frames"] for c in finished["chunks"]] == [9] + [4] * (len(finished["chunks"]) - 1)
    assert list_recordings(store)[0]["cut_off"] is True


def test_recovery_leaves_live_recordings_and_drops_a_cut_line(tmp_path):
    store = FileStore(tmp_path)
    live = FlightRecorder(store, "flight-live", 8, META, max_frames=100)
    live.add(chunk(0, 1), frames(5))
    dead = FlightRecorder(store, "flight-dead", 8, META, max_frames=100)
    dead.add(chunk(0, 1), frames(5))
    dead.add(chunk(1, 1), frames(4, 5))
    dead.video.close()
    dead._log.write('{"index": 2, "frames": 4, "act')  # the kill cut this line
    dead._log.close()  # the process is gone: its lock with it
    assert recover_recordings(store) == ["flight-dead"]
    record = json.loads((tmp_path / "flight-dead.json").read_text())
    assert (record["frames"], len(record["actions"]), record["cut_off"]) == (9, 2, True)
    assert (tmp_path / "flight-live.part.jsonl").is_file()  # still being written
    live.close()
    assert {e["id"]: e["cut_off"] for e in list_recordings(store)} == {"flight-live": False, "flight-dead": True}


def test_retention_counts_what_is_on_disk(tmp_path):
    for i in range(5):  # an earlier run's recordings
        for suffix in (".mp4", ".json"):
            (tmp_path / f"earlier-{i:03d}{suffix}").write_text("{}")
            os.utime(tmp_path / f"earlier-{i:03d}{suffix}", (1000 + i, 1000 + i))
    (tmp_path / "notes.txt").write_text("not ours")
    store = FileStore(tmp_path, keep=3)
    store.prune()
    assert store.finished_ids() == ["earlier-004", "earlier-003", "earlier-002"]
    store.add("flight-new1")  # the new one and the newest 2 of the others stay
    assert store.finished_ids() == ["earlier-004", "earlier-003"] and (tmp_path / "notes.txt").exists()


def test_temporary_folders_of_gone_processes_are_removed(tmp_path):
    stale = Path(tempfile.mkdtemp(prefix="wanfly-test-", dir=tmp_path))
    (stale / OWNER_LOCK).touch()
    (stale / "job.mp4").write_text("x")
    alive = Path(tempfile.mkdtemp(prefix="wanfly-test-", dir=tmp_path))
    holder = try_lock(alive / OWNER_LOCK)  # as a live process holds it
    young = Path(tempfile.mkdtemp(prefix="wanfly-test-", dir=tmp_path))  # no lock yet: just created
    assert remove_stale_folders("wanfly-test-", root=tmp_path) == 1
    assert not stale.exists() and alive.exists() and young.exists()
    holder.close()
    assert remove_stale_folders("wanfly-test-", root=tmp_path) == 1 and not alive.exists()


def test_a_temporary_store_holds_its_folder_until_closed(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = FileStore(None, prefix="wanfly-jobs-")
    assert store.temporary and store.folder.parent == tmp_path
    assert try_lock(store.folder / OWNER_LOCK) is None  # held
    FileStore(None, prefix="wanfly-jobs-").close()  # another process's start leaves it alone
    assert store.folder.is_dir()
    store.close()
    assert not store.folder.exists()


@pytest.fixture(autouse=True)
def no_stray_processes():
    """Kill what a test started and left running (a writer killed half-way leaves nothing else behind)."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    for child in psutil.Process().children(recursive=True):
        if child.pid not in before:
            child.kill()
