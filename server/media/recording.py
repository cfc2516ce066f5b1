"""Flight recordings and job videos, and the folder that keeps them.

A flight recording is written while the flight goes on (bounded memory) so that a kill, however hard (``kill -9`` of
the server and its ffmpeg, ``docker kill``, the OOM killer), keeps everything but the chunk it interrupts:
``<id>.part.ts`` (H.264 in MPEG-TS, every frame on disk as soon as it is encoded: ``models.media.LiveTsWriter``) and
``<id>.part.jsonl`` (a header line with the prompt and settings, then one line per chunk with its actions in the
training format, raw ``(k, 2, 8)``, each line flushed and fsync'd after the chunk's frames went to the encoder).
``FlightRecorder.close`` copies the video into ``<id>.mp4`` (no re-encode), writes ``<id>.json`` (the header, each
chunk, and the concatenated ``(T, 2, 8)`` of the whole flight), renames both into place (atomic) and removes the parts.

While a recording is written its ``.part.jsonl`` holds an ``flock``; the lock dies with the process. When a server
starts, ``recover_recordings`` finishes every part nobody holds as a cut-off recording (frames and action steps cut
to the same whole steps: ``models.media.read_recording_part``; its JSON says ``"cut_off": true``). A
``FileStore`` keeps the newest ``keep`` items of what is on disk (earlier runs' too); its temporary folder (no
folder given) holds a lock too, and folders of its prefix whose owner is gone are removed when the next one starts.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from models.media import (
    LIVE_CRF,
    LIVE_PRESET,
    PART_ACTIONS,
    PART_VIDEO,
    LiveTsWriter,
    copy_to_mp4,
    read_recording_part,
)
from models.media import write_mp4 as write_live_mp4

log = logging.getLogger("wanfly.recording")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
OWNER_LOCK = ".wanfly-owner"  # in a temporary folder: held (flock) by the process that uses the folder


def write_mp4(path, frames: np.ndarray, fps: float) -> None:
    """``(F, H, W, 3)`` uint8 -> an H.264 mp4 at ``path``, encoded for speed (jobs)."""
    write_live_mp4(path, frames, fps, crf=LIVE_CRF, preset=LIVE_PRESET)


def try_lock(path: Path):
    """An open file of ``path`` holding an exclusive flock, or None when another open file holds it (or the file is
    gone). Closing the file releases the lock; so does the death of its process."""
    try:
        handle = open(path, "a")
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def hold_folder(folder: Path):
    """Lock a new folder for this process: the lock file appears only once it is locked (locked under another name,
    then renamed), so another process's ``remove_stale_folders`` never sees it free."""
    handle = open(folder / (OWNER_LOCK + ".new"), "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(folder / (OWNER_LOCK + ".new"), folder / OWNER_LOCK)
    return handle


def remove_stale_folders(prefix: str, root=None) -> int:
    """Remove the temporary folders ``<root>/<prefix>*`` whose owner process is gone (its lock is free); returns
    how many. A folder without a lock file is left alone: its owner cannot be known (a server from before the lock,
    or one that is creating it right now)."""
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(prefix + "*"):
        if not folder.is_dir():
            continue
        lock_path = folder / OWNER_LOCK
        if not lock_path.is_file():
            continue
        handle = try_lock(lock_path)
        if handle is None:
            continue  # its owner is alive
        with handle:
            shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed %d stale %s* folder(s) of processes that are gone", removed, prefix)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, rename into place: ``path`` is either the old file or the whole new one, never a part."""
    temporary = path.with_name(path.name.split(".")[0] + ".tmp" + "".join(path.suffixes))
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FileStore:
    """A folder of result files keyed by id (``<id>.mp4``, ``<id>.json``), keeping the newest ``keep`` finished
    items on disk (by modification time, whoever wrote them); items being written (a ``.part`` file) are not
    counted. ``folder=None``: a temporary folder of ``prefix``, removed by ``close``."""

    def __init__(self, folder=None, keep: int = 16, prefix: str = "wanfly-"):
        self._owner = None
        if folder is None:
            remove_stale_folders(prefix)
            folder = tempfile.mkdtemp(prefix=prefix)
            self._owner = hold_folder(Path(folder))
        self.temporary = self._owner is not None
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.lock = threading.Lock()  # one pruning at a time

    def path(self, item_id: str, suffix: str) -> Path:
        if not ID_PATTERN.match(item_id or ""):
            raise ValueError(f"id: {item_id!r} is not a valid id")
        return self.folder / f"{item_id}{suffix}"

    def finished_ids(self) -> list[str]:
        """Ids with a finished file (``.mp4`` or ``.json``) and no part, newest first."""
        stamps, busy = {}, set()
        for file in self.folder.iterdir():
            stem, _, rest = file.name.partition(".")
            if not ID_PATTERN.match(stem):
                continue
            if rest.startswith(("part.", "tmp.")):
                busy.add(stem)
            elif rest in ("mp4", "json"):
                try:
                    stamps[stem] = max(stamps.get(stem, 0.0), file.stat().st_mtime)
                except FileNotFoundError:
                    continue
        return sorted((i for i in stamps if i not in busy), key=stamps.get, reverse=True)

    def add(self, item_id: str) -> None:
        """Register a new id: of the finished items, only the newest ``keep - 1`` stay (their files go)."""
        self.path(item_id, "")
        self.prune(keep=self.keep - 1, spare=item_id)

    def prune(self, keep: int = None, spare: str = None) -> None:
        keep = self.keep if keep is None else keep
        with self.lock:
            stale = [i for i in self.finished_ids() if i != spare][max(0, keep):]
            for item_id in stale:
                for file in self.folder.glob(f"{item_id}.*"):
                    file.unlink(missing_ok=True)

    def find(self, item_id: str, suffix: str):
        try:
            path = self.path(item_id, suffix)
        except ValueError:
            return None
        return path if path.is_file() else None

    def close(self) -> None:
        if self._owner is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self._owner.close()
            self._owner = None


class FlightRecorder:
    """Appends a flight's frames and chunk actions as they come; ``close`` finishes the recording."""

    def __init__(self, store: FileStore, flight_id: str, fps: int, meta: dict, max_frames: int):
        self.store, self.id, self.fps, self.max_frames = store, flight_id, fps, max_frames
        self.started = time.time()
        self.meta = {**meta, "fps": fps, "started": round(self.started, 3)}
        self.chunks: list[dict] = []
        self.truncated = False
        self._log = open(store.path(flight_id, PART_ACTIONS), "x")
        fcntl.flock(self._log, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until close: the recording is alive
        self._append(self.meta)
        self.video = LiveTsWriter(store.path(flight_id, PART_VIDEO), fps, crf=LIVE_CRF, preset=LIVE_PRESET)
        store.add(flight_id)

    def _append(self, record: dict) -> None:
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def add(self, chunk_meta: dict, frames: np.ndarray) -> None:
        """One chunk's frames and its meta (``frames``, ``actions``: one step per 4 frames after the flight's frame
        0); past ``max_frames`` the video is cut and the chunk's meta with it, so frames and steps still agree."""
        room = self.max_frames - self.video.count
        if room < len(frames):
            self.truncated = True
            first = int(self.video.count == 0)
            steps = max(0, room - first) // 4
            room = min(room, first + 4 * steps)  # whole steps only
            chunk_meta = {**chunk_meta, "frames": max(room, 0), "actions": chunk_meta["actions"][:steps],
                          "truncated": True}
        if room > 0:
            self.video.write_frames(frames[:room])
            self.chunks.append(chunk_meta)
            self._append(chunk_meta)  # after the frames: a line never names frames the encoder was not given

    def close(self) -> dict:
        """Finish: ``<id>.mp4`` and ``<id>.json`` in place, the parts removed; returns ``{"id", "frames", "chunks",
        "truncated"}``. If it fails, the parts stay and the next server start finishes them as cut off."""
        try:
            self.video.close()
            steps = [step for chunk in self.chunks for step in chunk["actions"]]
            record = {**self.meta, "frames": self.video.count, "truncated": self.truncated, "cut_off": False,
                      "duration_s": round(time.time() - self.started, 3), "chunks": self.chunks, "actions": steps}
            finish(self.store, self.id, record)
        finally:
            self._log.close()  # releases the lock
        return {"id": self.id, "frames": self.video.count, "chunks": len(self.chunks), "truncated": self.truncated}

    def abandon(self) -> None:
        """After a failure: stop writing and release the parts (the next server start finishes them as cut off)."""
        try:
            self.video.close()
        except Exception:  # the encoder may be what failed
            pass
        self._log.close()


def finish(store: FileStore, item_id: str, record: dict) -> None:
    """The parts of ``item_id`` -> ``<id>.mp4`` (``record["frames"]`` frames) and ``<id>.json`` (``record``), each
    renamed into place once whole (the mp4 first: a JSON means a finished recording); then the parts go."""
    video = store.path(item_id, ".mp4")
    if record["frames"]:
        temporary = store.path(item_id, ".tmp.mp4")
        copy_to_mp4(store.path(item_id, PART_VIDEO), temporary, record["frames"])
        fsync_file(temporary)
        os.replace(temporary, video)
    atomic_write_text(store.path(item_id, ".json"), json.dumps(record))
    fsync_folder(store.folder)
    for suffix in (PART_VIDEO, PART_ACTIONS):
        store.path(item_id, suffix).unlink(missing_ok=True)


def recover_recordings(store: FileStore) -> list[str]:
    """Finish every recording whose writer is gone (its ``.part.jsonl`` is not locked) as cut off; a part with no
    whole step is removed. Returns the ids recovered."""
    recovered = []
    for actions in sorted(store.folder.glob("*" + PART_ACTIONS)):
        item_id = actions.name[:-len(PART_ACTIONS)]
        if not ID_PATTERN.match(item_id):
            continue
        handle = try_lock(actions)
        if handle is None:
            continue  # being written
        with handle:
            try:
                if store.find(item_id, ".json") is None:  # else it was finished, all but removing the parts
                    record = read_recording_part(actions)
                    if not record["actions"]:
                        log.warning("recording %s was cut off before its first whole step; removed", item_id)
                    else:
                        video_frames = record.pop("video_frames")
                        record.pop("video")
                        finish(store, item_id, record)
                        recovered.append(item_id)
                        log.info("recording %s was cut off: recovered %d frames, %d action steps (the video held %d "
                                 "whole frames)", item_id, record["frames"], len(record["actions"]), video_frames)
            except (OSError, ValueError) as error:
                log.warning("recording %s was cut off and cannot be recovered: %s", item_id, error)
                continue
            for suffix in (PART_VIDEO, PART_ACTIONS, ".tmp.mp4", ".tmp.json"):
                store.path(item_id, suffix).unlink(missing_ok=True)
    return recovered


def recording_summary(record: dict, item_id: str) -> dict:
    """One entry of the ``GET /recordings`` listing (no actions)."""
    url = f"/recordings/{item_id}"
    return {"id": item_id, "video": url + ".mp4", "actions": url + ".json", "frames": record.get("frames"),
            "steps": len(record.get("actions", [])), "chunks": len(record.get("chunks", [])), "fps": record.get("fps"),
            "started": record.get("started"), "duration_s": record.get("duration_s"), "prompt": record.get("prompt"),
            "world": record.get("world"), "generation": record.get("generation"),
            "truncated": bool(record.get("truncated")), "cut_off": bool(record.get("cut_off"))}


def list_recordings(store: FileStore) -> list[dict]:
    """The finished recordings on disk, newest first (``recording_summary`` each)."""
    entries = []
    for item_id in store.finished_ids():
        path = store.find(item_id, ".json")
        if path is None or store.find(item_id, ".mp4") is None:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # pruned meanwhile, or not ours
        if isinstance(record, dict):
            entries.append(recording_summary(record, item_id))
    return entries
