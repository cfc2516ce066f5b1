"""The training data: the seed's ``video,prompt,action`` CSV, validated up front, plus its data order.

* ``read_metadata`` + ``validate_rows`` check every row before training (file present, decodable, enough frames,
  action parseable as ``(T, 2, 8)`` with finite 0/1 flags and magnitudes >= 0) and name bad rows by row number and
  file, so a long run does not die at step 30k. ``--on_bad_sample skip`` drops them instead of stopping.
* ``ActionVideoDataset`` loads frames with diffsynth's video operator (the first ``num_frames`` frames, resized and
  centre-cropped) and returns the raw action; the magnitude scale is applied later by ``models.action_format`` only.
* ``GlobalOrder`` is the data order: one seeded permutation per epoch over the whole dataset, consumed by all ranks
  in turn (global position p -> rank p % world). Its whole state is the number of samples consumed, so resuming is
  exact and needs no sampler pickles.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from models.action_format import parse_actions
from models.media import probe_video
from training.data.action_stats import compute_action_stats

logger = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("video", "prompt", "action")
RESIZE_FACTOR = 32  # Wan2.2-TI2V: 16x VAE x 2x2 patchify


@dataclass
class Row:
    row: int  # 1-based data row (the CSV line is row + 1, after the header)
    video: str  # as written in the CSV
    prompt: str
    action: object  # the JSON string until validated, then a float32 (T, 2, 8) tensor

    def where(self) -> str:
        return f"row {self.row} (line {self.row + 1}, {self.video or '<empty video>'})"


class DataError(ValueError):
    """A bad dataset (missing column, bad rows with --on_bad_sample error)."""


def read_metadata(path: str, required: tuple[str, ...] = REQUIRED_COLUMNS) -> list[Row]:
    """The rows of a ``video,prompt,action`` CSV (the one reader of the format; a column not ``required`` may be
    missing and reads as empty). DataError naming the file for missing columns or no rows."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; expected {list(required)} "
                            f"(found {reader.fieldnames})")
        rows = [Row(i, (r.get("video") or "").strip(), r.get("prompt") or "", r.get("action"))
                for i, r in enumerate(reader, 1)]
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


def video_path(base_path: str, video: str) -> str:
    return video if os.path.isabs(video) else os.path.join(base_path, video)


def _video_problem(path: str, num_frames: int) -> Optional[str]:
    if not os.path.isfile(path):
        return "video file not found"
    try:
        frames = probe_video(path)["frames"]
    except ValueError as error:
        return f"unreadable video ({error})"
    if frames < num_frames:
        return f"video has {frames} frames, --num_frames needs {num_frames}"
    return None


def _action_problem(row: Row, steps: int) -> tuple[Optional[str], Optional[torch.Tensor]]:
    try:
        raw = parse_actions(row.action, name="action")[0]  # (T, 2, 8)
    except ValueError as error:
        return str(error), None
    if raw.shape[0] < steps:
        return (f"action has {raw.shape[0]} steps, --num_frames needs {steps} "
                f"(one per latent frame after the first)"), None
    return None, raw[:steps].contiguous()  # like the video, only the prefix the clip uses


def check_row(row: Row, base_path: str, num_frames: int, steps: int) -> tuple[Row, Optional[str]]:
    """(row with a parsed action, None) or (row, reason it is bad)."""
    if not row.video:
        return row, "empty video path"
    if not row.prompt.strip():
        return row, "empty prompt"
    reason, action = _action_problem(row, steps)
    if reason is None:
        reason = _video_problem(video_path(base_path, row.video), num_frames)
    if reason is not None:
        return row, reason
    return Row(row.row, row.video, row.prompt, action), None


def validate_rows(rows: list[Row], base_path: str, num_frames: int, steps: int, on_bad_sample: str = "error",
                  threads: int = 8, source: str = "metadata") -> tuple[list[Row], list[str]]:
    """Check every row; returns (good rows, problems as 'row N (...): reason'). With ``on_bad_sample='error'``
    any problem raises DataError listing them all (the first 20)."""
    with ThreadPoolExecutor(max(1, threads)) as pool:  # probing is I/O and OpenCV (GIL released)
        results = list(pool.map(lambda r: check_row(r, base_path, num_frames, steps), rows))
    good = [row for row, reason in results if reason is None]
    problems = [f"{row.where()}: {reason}" for row, reason in results if reason is not None]
    if problems and on_bad_sample == "error":
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{source}: {len(problems)} bad row(s) of {len(rows)} (pass --on_bad_sample skip to drop "
                        f"them):\n  {shown}{more}")
    if not good:
        raise DataError(f"{source}: no usable rows ({len(problems)} bad)")
    return good, problems


class ActionVideoDataset(torch.utils.data.Dataset):
    """Validated rows -> ``{"video": [PIL frames], "prompt", "action": (T,2,8) raw float32, "row"}``."""

    def __init__(self, rows: list[Row], base_path: str, num_frames: int, height: Optional[int] = None,
                 width: Optional[int] = None, max_pixels: int = 1024 * 1024, repeat: int = 1,
                 skip_bad: bool = False):
        from diffsynth.core import UnifiedDataset

        self.rows, self.base_path, self.num_frames, self.repeat = rows, base_path, num_frames, repeat
        self.skip_bad = skip_bad
        self.load_video = UnifiedDataset.default_video_operator(
            base_path=base_path, max_pixels=max_pixels, height=height, width=width,
            height_division_factor=RESIZE_FACTOR, width_division_factor=RESIZE_FACTOR, num_frames=num_frames,
            time_division_factor=4, time_division_remainder=1)

    def __len__(self) -> int:
        return len(self.rows) * self.repeat

    def load_row(self, index: int) -> dict:
        row = self.rows[index % len(self.rows)]
        try:
            frames = self.load_video(row.video)
        except Exception as error:  # decoders raise anything; name the row
            raise DataError(f"{row.where()}: cannot load video ({type(error).__name__}: {error})") from error
        if len(frames) != self.num_frames:
            raise DataError(f"{row.where()}: loaded {len(frames)} frames, expected {self.num_frames}")
        return {"video": frames, "prompt": row.prompt, "action": row.action, "row": row.row}

    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad:
            return self.load_row(index)
        for offset in range(len(self.rows)):  # --on_bad_sample skip: the next row, deterministically
            try:
                return self.load_row(index + offset)
            except DataError as error:
                logger.warning("skipping %s", error)
        raise DataError("no row of the dataset can be loaded")


class GlobalOrder(torch.utils.data.Sampler):
    """This rank's indices from global position ``start`` on (infinite; see the module docstring)."""

    def __init__(self, num_samples: int, seed: int, world_size: int = 1, rank: int = 0, start: int = 0):
        self.num_samples, self.seed, self.world_size, self.rank = num_samples, seed, world_size, rank
        self.start = start  # global samples already consumed (all ranks)
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_samples, generator=generator)
        return self._perm

    def index_at(self, position: int) -> int:
        return int(self.permutation(position // self.num_samples)[position % self.num_samples])

    def __iter__(self) -> Iterator[int]:
        # The first global position >= start that belongs to this rank; start is a multiple of world_size.
        position = self.start + self.rank
        while True:
            yield self.index_at(position)
            position += self.world_size

    def epoch_at(self, position: int) -> int:
        return position // self.num_samples


def first_item(items: list):
    """Batch size 1 (one clip per micro-batch, as diffsynth): the sample itself, no collation."""
    return items[0]


def make_loader(dataset, order: GlobalOrder, num_workers: int) -> torch.utils.data.DataLoader:
    # A private generator: the DataLoader draws a base seed per iterator, which must not consume the global RNG
    # (that would shift the noise/timestep stream between a straight run and a resumed one).
    return torch.utils.data.DataLoader(dataset, sampler=order, batch_size=1, collate_fn=first_item,
                                       num_workers=num_workers, generator=torch.Generator().manual_seed(order.seed),
                                       persistent_workers=False)


def dataset_action_stats(rows: list[Row]) -> dict:
    """Per-action statistics of the validated rows' raw actions (the prefix the clips use), for
    action_train_config.json's ``action_stats`` (the server derives keyboard magnitudes from them)."""
    return compute_action_stats(torch.stack([row.action for row in rows]).numpy())  # (N, T, 2, 8)


def dataset_heading_frame(metadata_csv: str) -> bool:
    """Whether the dataset's actions were measured in the horizontal heading frame (``metadata.json`` next to the
    CSV, written by training.synthetic and training.prepare_sekai); inference must use the same convention."""
    path = os.path.join(os.path.dirname(os.path.abspath(metadata_csv)), "metadata.json")
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as handle:
            return json.load(handle).get("motion_frame") == "heading"
    except (OSError, ValueError, AttributeError):
        logger.warning("%s: unreadable, assuming camera-frame actions", path)
        return False
