"""Flight recordings and job videos (H.264 mp4 through ``models.media``), and the folder that keeps them.

A flight recording is written while the flight goes on (bounded memory): ``<id>.mp4`` with every frame shown and
``<id>.json`` with the prompt and each chunk's actions in the training format (raw ``(k, 2, 8)``, plus the
concatenated ``(T, 2, 8)`` of the whole flight).
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from models.media import LIVE_CRF, LIVE_PRESET, Mp4Writer
from models.media import write_mp4 as write_live_mp4

log = logging.getLogger("wanfly.recording")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def write_mp4(path, frames: np.ndarray, fps: float) -> None:
    """``(F, H, W, 3)`` uint8 -> an H.264 mp4 at ``path``, encoded for speed (jobs)."""
    write_live_mp4(path, frames, fps, crf=LIVE_CRF, preset=LIVE_PRESET)


class FileStore:
    """A folder of result files keyed by id (``<id>.mp4``, ``<id>.json``), keeping the newest ``keep`` ids."""

    def __init__(self, folder=None, keep: int = 16, prefix: str = "wanfly-"):
        self._tmp = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
            folder = self._tmp.name
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._lock = threading.Lock()
        self._ids: list[str] = []

    def path(self, item_id: str, suffix: str) -> Path:
        if not ID_PATTERN.match(item_id or ""):
            raise ValueError(f"id: {item_id!r} is not a valid id")
        return self.folder / f"{item_id}{suffix}"

    def add(self, item_id: str) -> None:
        """Register an id; the oldest ids beyond ``keep`` lose their files."""
        with self._lock:
            self._ids.append(item_id)
            old, self._ids = self._ids[:-self.keep], self._ids[-self.keep:]
        for stale in old:
            for file in self.folder.glob(f"{stale}.*"):
                file.unlink(missing_ok=True)

    def find(self, item_id: str, suffix: str):
        try:
            path = self.path(item_id, suffix)
        except ValueError:
            return None
        return path if path.is_file() else None

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


class FlightRecorder:
    """Appends a flight's frames and chunk actions; ``close`` finalises the mp4 and writes the JSON."""

    def __init__(self, store: FileStore, flight_id: str, width: int, height: int, fps: int, meta: dict,
                 max_frames: int):
        self.store, self.id, self.meta, self.max_frames = store, flight_id, dict(meta), max_frames
        store.add(flight_id)
        self.fps = fps
        self.video = Mp4Writer(store.path(flight_id, ".mp4"), fps, crf=LIVE_CRF, preset=LIVE_PRESET)
        self.chunks: list[dict] = []
        self.truncated = False
        self.started = time.time()

    def add(self, chunk_meta: dict, frames: np.ndarray) -> None:
        """One chunk's frames and its meta (``frames``, ``actions``: one step per 4 frames after the flight's frame
        0); past ``max_frames`` the video is cut and the chunk's meta with it, so frames and steps still agree."""
        room = self.max_frames - self.video.count
        if room < len(frames):
            self.truncated = True
            first = int(self.video.count == 0)
            steps = max(0, room - first) // 4
            room = min(room, first + 4 * steps)  # whole steps only
            chunk_meta = {**chunk_meta, "frames": max(room, 0), "actions": chunk_meta["actions"][:steps]}
        if room > 0:
            self.video.write_frames(frames[:room])
            self.chunks.append(chunk_meta)

    def close(self) -> dict:
        """Finalise both files; returns ``{"id", "frames", "chunks", "truncated"}``."""
        self.video.close()
        steps = [step for chunk in self.chunks for step in chunk["actions"]]
        record = {**self.meta, "fps": self.fps, "frames": self.video.count, "truncated": self.truncated,
                  "duration_s": round(time.time() - self.started, 3), "chunks": self.chunks, "actions": steps}
        with open(self.store.path(self.id, ".json"), "w") as f:
            json.dump(record, f)
        return {"id": self.id, "frames": self.video.count, "chunks": len(self.chunks), "truncated": self.truncated}
