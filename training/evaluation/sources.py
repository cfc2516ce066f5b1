"""Where the clips of ``training.evaluate`` come from: files (a dataset CSV, folders of recordings), synthetic
flights with known actions (the dataset's own renderer: evaluation flight i of a seed is dataset clip i of that
seed), and first frames for the generation suite (rendered held-out worlds or a folder of images).

A clip is ``{name, frames (N, H, W, 3) uint8 or video (a path), actions (T, 2, 8), prompt}``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from models.media import PART_ACTIONS, fit_image, read_recording_part, read_video
from training.data.dataset import read_metadata
from training.data.synthetic import held_out_view, render_random_flight
from training.evaluation.metrics import check_actions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_PROMPT = "a drone flies over a landscape"


# ---------------------------------------------------------------------------------------------------- files
def read_recording(path) -> tuple[np.ndarray, str | None]:
    """Commanded ``(T, 2, 8)`` and prompt of a recording JSON: ``actions``, else ``chunks[i].actions`` concatenated."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    if isinstance(data, dict) and "actions" in data:
        raw = data["actions"]
    elif isinstance(data, dict) and isinstance(data.get("chunks"), list):
        if not all(isinstance(c, dict) and "actions" in c for c in data["chunks"]):
            raise ValueError(f"{path}: every entry of 'chunks' needs an 'actions' (k, 2, 8) list")
        raw = [step for chunk in data["chunks"] for step in chunk["actions"]]
    else:
        raise ValueError(f"{path}: expected a JSON object with 'actions' (T, 2, 8) or 'chunks': [{{'actions': ...}}]")
    prompt = data.get("prompt")
    return check_actions(raw, f"{path}: actions"), prompt if isinstance(prompt, str) else None


def load_recordings(folder) -> list[dict]:
    """Clips ``{name, video, actions, prompt}`` of a folder of ``*.mp4`` with sibling ``*.json``, and of server
    recordings that were cut off (``<id>.part.jsonl`` + ``<id>.part.ts``, ``models.media.read_recording_part``: their
    frames (loaded) and actions cut to the whole steps both files hold; one with none is skipped, said on stderr)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--recordings {folder}: not a folder")
    parts = {p.name[:-len(PART_ACTIONS)]: p for p in sorted(folder.glob("*" + PART_ACTIONS))}
    videos = [v for v in sorted(folder.glob("*.mp4")) if not v.name.endswith(".tmp.mp4")]  # .tmp: being renamed
    if not videos and not parts:
        raise ValueError(f"--recordings {folder}: no *.mp4 files")
    clips = []
    for video in videos:
        meta = video.with_suffix(".json")
        if not meta.is_file():
            if video.stem in parts:  # a recording killed while it was being finished: its parts are read below
                continue
            raise ValueError(f"--recordings: {video} has no sibling {meta.name} with its actions")
        parts.pop(video.stem, None)  # finished: a part left beside it is a leftover
        actions, prompt = read_recording(meta)
        clips.append({"name": video.stem, "video": str(video), "actions": actions, "prompt": prompt})
    for name, part in parts.items():
        try:
            record = read_recording_part(part)
        except ValueError as error:
            record = {"actions": [], "why": str(error)}
        if not record["actions"]:
            why = record.get("why", "it was cut off before its first whole step")
            print(f"--recordings: {part} skipped: {why}", file=sys.stderr)
            continue
        prompt = record.get("prompt")
        frames = read_video(record["video"])[:record["frames"]]  # the whole steps only: the tail may be half a frame
        clips.append({"name": name, "frames": frames, "video": record["video"],
                      "actions": check_actions(record["actions"], str(part)),
                      "prompt": prompt if isinstance(prompt, str) else None})
    return sorted(clips, key=lambda clip: clip["name"])


def load_csv(path, base_path=None) -> list[dict]:
    """Clips of a dataset CSV (``video,prompt,action``; video paths relative to ``base_path``, default its folder)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--csv {path}: file not found")
    base = Path(base_path) if base_path else path.parent
    try:
        rows = read_metadata(str(path), required=("video", "action"))
    except ValueError as error:
        raise ValueError(f"--csv {error}") from None
    clips = []
    for row in rows:
        video = base / row.video
        if not video.is_file():
            raise ValueError(f"--csv {path}: row {row.row}: video {video} not found")
        actions = check_actions(row.action, f"--csv {path}: row {row.row}: action")
        clips.append({"name": video.stem, "video": str(video), "actions": actions, "prompt": row.prompt})
    return clips


# --------------------------------------------------------------------------------------- synthetic flights
def synthetic_flights(count: int, seed: int = 0, frames: int = 33, height: int = 96, width: int = 96,
                      progress: bool = False, speed: float = 1.0) -> list[dict]:
    """Flights ``0..count-1`` of the synthetic dataset of ``seed`` (``training.data.synthetic.
    render_random_flight``: its action mix scaled by ``speed``, random heading, path kept clear), rendered in
    memory: clips ``{name, frames (N, H, W, 3) uint8, actions (T, 2, 8) as flown, prompt}``."""
    indices = range(count)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="rendering synthetic flights", unit="clip", file=sys.stderr)
    clips = []
    for index in indices:
        video, _, flown, prompt = render_random_flight(seed, index, frames, height, width, speed=speed)
        clips.append({"name": f"synthetic_{seed}_{index:04d}", "frames": video, "actions": flown, "prompt": prompt})
    return clips


# ------------------------------------------------------------------------------------------- first frames
def rendered_first_frames(count: int, height: int, width: int, seed: int = 0) -> list[tuple[str, np.ndarray, str]]:
    """``(name, first frame (H, W, 3) uint8, prompt)`` of ``count`` synthetic worlds seen from the start pose."""
    return [(f"scene{index}", *held_out_view(9_000_000 + 1000 * seed + index, height, width))  # far from training
            for index in range(count)]


def image_first_frames(folder, height: int, width: int, prompt: str | None) -> list[tuple[str, np.ndarray, str]]:
    """First frames from a folder of images, centre-cropped to the aspect ratio and resized to height x width
    (``models.media.fit_image``); the prompt from a sibling ``.txt``, else ``prompt``."""
    paths = sorted(p for p in Path(folder).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if Path(folder).is_dir() else []
    if not paths:
        raise ValueError(f"--images {folder}: no {'/'.join(IMAGE_SUFFIXES)} files found")
    frames = []
    for path in paths:
        with Image.open(path) as image:
            first = np.asarray(fit_image(image.convert("RGB"), width, height))
        text = path.with_suffix(".txt")
        frames.append((path.stem, first, text.read_text().strip() if text.is_file() else (prompt or DEFAULT_PROMPT)))
    return frames
