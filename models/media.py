"""Video and image files, shared by the server (recordings, jobs) and training (datasets, evaluation).

Frames are RGB uint8 ``(H, W, 3)`` everywhere in wanfly (OpenCV's BGR stays inside this file). Writing uses
imageio-ffmpeg (H.264, yuv420p), reading and probing use OpenCV; both load lazily, so importing this module starts
nothing. ``fit_image`` is the one centre-crop + resize of the project (first frames, converted datasets).

Flight recordings (the server writes them, ``training.evaluate --recordings`` reads them): a finished recording is
``<id>.mp4`` + ``<id>.json``; one being written, or cut off by a kill, is ``<id>.part.ts`` (``LiveTsWriter``: every
frame on disk as soon as it is encoded) + ``<id>.part.jsonl`` (a header line, then one line per chunk).
``read_recording_part`` reads a cut-off one: frames and action steps cut to the same number of whole steps.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

# x264 constant-rate factor for datasets: 12-16 is visually lossless at these sizes; training data should not carry
# compression artefacts the model could learn.
DEFAULT_CRF = 14
DEFAULT_PRESET = "medium"
# Live recordings and jobs: encoded while a flight goes on, so speed matters more than the last bit of quality.
LIVE_CRF = 20
LIVE_PRESET = "veryfast"


class Mp4Writer:
    """Streaming H.264/yuv420p mp4 writer: frames go to ffmpeg as they come (nothing is buffered here).

    Height and width must be even (yuv420p halves chroma); frames are never resized. ``count`` frames written.
    """
    extra_params: tuple[str, ...] = ()  # ffmpeg output options of a subclass

    def __init__(self, path: str | Path, fps: float, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET):
        self.path, self.fps, self.crf, self.preset = Path(path), float(fps), int(crf), preset
        self.count, self._shape, self._writer = 0, None, None

    def write(self, frame: np.ndarray) -> None:
        """One ``(H, W, 3)`` uint8 frame."""
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames: expected uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if self._writer is None:
            self._open(frame.shape)
        elif frame.shape != self._shape:
            raise ValueError(f"frames: frame {self.count} has shape {frame.shape}, expected {self._shape}")
        self._writer.send(frame)
        self.count += 1

    def write_frames(self, frames: Iterable[np.ndarray]) -> None:
        """Several frames, e.g. a ``(n, H, W, 3)`` array."""
        for frame in frames:
            self.write(frame)

    def _open(self, shape) -> None:
        import imageio_ffmpeg

        height, width = shape[:2]
        if height % 2 or width % 2:
            raise ValueError(f"frames: height and width must be even for yuv420p, got {height}x{width}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._shape = shape
        self._writer = imageio_ffmpeg.write_frames(
            str(self.path), (width, height), fps=self.fps, codec="libx264", pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p", quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(self.crf), "-preset", self.preset, *self.extra_params])
        self._writer.send(None)  # seed the generator

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LiveTsWriter(Mp4Writer):
    """H.264 in MPEG-TS, each frame on disk as soon as ffmpeg has it: no lookahead or B-frames (``zerolatency``), one
    slice (so a cut frame fails to decode instead of half-decoding), a flush per packet. A file cut at any point
    plays up to its last whole frame (``count_whole_frames``). A fragmented mp4 would hold back each last frame until
    the next one comes (a fragment's last sample has no duration yet); MPEG-TS holds back nothing."""

    extra_params = ("-tune", "zerolatency", "-threads", "1", "-flush_packets", "1", "-f", "mpegts")


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, crf: int = DEFAULT_CRF,
              preset: str = DEFAULT_PRESET) -> int:
    """Write RGB uint8 frames ``(H, W, 3)`` as an mp4; returns the number of frames written."""
    writer = Mp4Writer(path, fps, crf, preset)
    try:
        writer.write_frames(frames)
    finally:
        writer.close()
    if writer.count == 0:
        raise ValueError("frames: no frames to write")
    return writer.count


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


TS_PACKET = 188  # bytes: a file that ends mid-packet was cut in the middle of a frame's write


def count_whole_frames(path: str | Path) -> int:
    """Frames of a video that decode whole, for a file that may have been cut while it was written: every frame is
    decoded (ffmpeg); when any failed, or an MPEG-TS file ends mid-packet, the last one decoded does not count."""
    path = Path(path)
    result = subprocess.run([_ffmpeg(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "framecrc",
                             "-"], capture_output=True, text=True, timeout=3600)
    frames = sum(1 for line in result.stdout.splitlines() if line and not line.startswith("#"))
    cut = result.returncode != 0 or result.stderr.strip() != "" or \
        (path.suffix == ".ts" and path.stat().st_size % TS_PACKET != 0)
    return max(0, frames - 1) if cut else frames


def copy_to_mp4(source: str | Path, target: str | Path, frames: int) -> None:
    """The first ``frames`` frames of ``source`` into an mp4 at ``target`` without re-encoding (stream copy; the
    live writer makes no B-frames, so the first packets are the first frames); ValueError when ffmpeg fails."""
    result = subprocess.run([_ffmpeg(), "-nostdin", "-v", "error", "-i", str(source), "-map", "0:v:0", "-c", "copy",
                             "-frames:v", str(frames), "-movflags", "+faststart", "-f", "mp4", "-y", str(target)],
                            capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise ValueError(f"copying {source} to {target} failed: {result.stderr.strip()[-300:]}")


PART_VIDEO, PART_ACTIONS = ".part.ts", ".part.jsonl"


def read_recording_part(actions_path: str | Path) -> dict:
    """A recording that was never finished (``<id>.part.jsonl`` + ``<id>.part.ts``): the record its ``<id>.json``
    would hold (the header's fields, ``fps``, ``frames``, ``chunks``, ``actions`` (T, 2, 8), ``truncated``), cut to
    the whole steps both files hold: ``frames`` = 1 + 4 T. Adds ``cut_off: True``, ``video`` (the part's path) and
    ``video_frames`` (whole frames it holds). A line cut by the kill, and what follows it, is ignored."""
    actions_path = Path(actions_path)
    video = actions_path.with_name(actions_path.name[:-len(PART_ACTIONS)] + PART_VIDEO)
    lines = actions_path.read_text(errors="replace").split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise ValueError(f"{actions_path}: no header line (the recording was cut off before it began)") from None
    if not isinstance(header, dict) or "fps" not in header:
        raise ValueError(f"{actions_path}: the first line is not a recording header")
    chunks = []
    for line in lines[1:-1]:  # the text after the last newline is a line the kill cut
        try:
            chunk = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(chunk, dict) or not isinstance(chunk.get("actions"), list):
            break
        chunks.append(chunk)
    video_frames = count_whole_frames(video) if video.is_file() else 0
    steps = min(sum(len(chunk["actions"]) for chunk in chunks), max(0, video_frames - 1) // 4)
    kept, left = [], steps
    for i, chunk in enumerate(chunks):
        take = min(left, len(chunk["actions"]))
        if take == 0 and i > 0:
            break
        kept.append({**chunk, "frames": int(i == 0) + 4 * take, "actions": chunk["actions"][:take]})
        left -= take
    frames = 1 + 4 * steps if kept and video_frames else 0
    return {**header, "frames": frames, "truncated": any(c.get("truncated", False) for c in kept), "chunks": kept,
            "actions": [step for chunk in kept for step in chunk["actions"]], "cut_off": True, "video": str(video),
            "video_frames": video_frames}


def probe_video(path: str | Path) -> dict:
    """``{"fps", "frames", "width", "height"}`` of a video; ValueError when OpenCV cannot decode it."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot open video {path}")
        info = {
            "fps": float(capture.get(cv2.CAP_PROP_FPS)),
            "frames": int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            "width": int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        }
        ok, _ = capture.read()
    finally:
        capture.release()
    if not ok or not np.isfinite(info["fps"]) or info["fps"] <= 0 or info["frames"] <= 0:
        raise ValueError(f"cannot decode video {path} (fps={info['fps']}, frames={info['frames']})")
    return info


def iter_frames(path: str | Path, wanted: set[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, RGB frame)`` in order; frames not in ``wanted`` are skipped without decoding to RGB."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path}")
    last = max(wanted) if wanted else None
    try:
        index = 0
        while last is None or index <= last:
            if wanted is not None and index not in wanted:
                if not capture.grab():  # grab() decodes no pixels to RGB, so skipping is cheap
                    return
            else:
                ok, frame = capture.read()
                if not ok:
                    return
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def read_video(path: str | Path, stride: int = 1) -> np.ndarray:
    """Frames 0, stride, 2 stride, ... of a video, ``(N, H, W, 3)`` uint8 RGB (small clips, evaluation)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    count = probe_video(path)["frames"] if stride > 1 else None
    wanted = None if count is None else set(range(0, count, stride))
    frames = [frame for _, frame in iter_frames(path, wanted)]
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    return np.stack(frames)


def fit_image(image, width: int, height: int):
    """Centre-crop to the target aspect ratio, then resize (Lanczos) to ``width x height``: a PIL image gives a PIL
    image, an ``(H, W, 3)`` uint8 array gives an array."""
    array = isinstance(image, np.ndarray)
    picture = Image.fromarray(image) if array else image
    src_w, src_h = picture.size
    scale = max(width / src_w, height / src_h)
    crop_w, crop_h = min(src_w, round(width / scale)), min(src_h, round(height / scale))
    left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    picture = picture.crop((left, top, left + crop_w, top + crop_h))
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(picture) if array else picture


def video_to_frames(video) -> np.ndarray:
    """Pipeline ``floatpoint`` output ``(1, 3, F, H, W)`` in [-1, 1] -> ``(F, H, W, 3)`` uint8 (contiguous)."""
    # One float copy then in-place ops, and uint8 before the layout change and the device-to-host copy (4x less
    # data): 2.4x faster than clamp/add/mul/round as separate copies (17x480x832 on CPU: 593 -> 248 ms), same bytes.
    x = video[0].float().add(1).mul_(127.5).clamp_(0, 255).round_().to(torch.uint8)  # (3, F, H, W)
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()  # (F, H, W, 3)
