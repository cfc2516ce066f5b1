"""Split training (``--cache_dir``): encode every clip once (VAE latents, first-frame latents, T5 context), then
train on the cache. At 5B scale the frozen encoders dominate step time; with only the controller (and a DiT LoRA)
training, no pipeline unit depends on a trainable model, so every unit output is cacheable.

    <cache_dir>/cache_info.json      what the cache was built from (dataset file, sizes, base model, dtype)
    <cache_dir>/row-000001.pt        one file per CSV row: (shared, posi, nega) unit outputs, atomically written

A cache is reused when its info matches and refused (naming the differing field) when it does not. Rows are split
across ranks; a run killed mid-build resumes where it stopped (existing row files are kept).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import torch

from training.data.dataset import DataError, Row
from training.trainer.checkpoint import torch_save_atomic, write_json_atomic
from training.trainer.config import ConfigError, TrainConfig, metadata_path
from training.trainer.module import strip_for_cache

logger = logging.getLogger(__name__)
INFO_NAME = "cache_info.json"


def cache_info(c: TrainConfig, base: dict, torch_dtype: torch.dtype) -> dict:
    with open(metadata_path(c), "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return {"metadata": os.path.abspath(metadata_path(c)), "metadata_sha256": digest,
            "dataset_base_path": os.path.abspath(c.dataset_base_path), "num_frames": c.num_frames,
            "height": c.height, "width": c.width, "max_pixels": c.max_pixels, "base_model_id": base["base_model_id"],
            "base_model_dir": base["base_model_dir"], "torch_dtype": str(torch_dtype).replace("torch.", "")}


def check_cache_info(cache_dir: str, info: dict) -> bool:
    """True when a matching cache exists, False when the folder has none yet; ConfigError on a mismatch."""
    path = os.path.join(cache_dir, INFO_NAME)
    if not os.path.isfile(path):
        return False
    with open(path) as handle:
        found = json.load(handle)
    differing = [key for key in info if found.get(key) != info[key]]
    if differing:
        key = differing[0]
        raise ConfigError(f"--cache_dir: {cache_dir!r} was built for another setup ({key}: {found.get(key)!r} != "
                          f"{info[key]!r}); use an empty folder")
    return True


def row_file(cache_dir: str, row: Row) -> str:
    return os.path.join(cache_dir, f"row-{row.row:06d}.pt")


def split_units(module, c: TrainConfig) -> None:
    """Units that depend on a trained model (diffsynth's unit graph) run at train time on the cached inputs; for
    the TI2V path that is only a no-op Animate2 unit, so the VAE and text encoder run once per clip."""
    trained = [n for n in c.trainable_models.split(",") if n] + ([c.lora_base_model] if c.lora_base_model else [])
    module.split_units_for_cache(trained)
    encoders = {"vae", "text_encoder"}
    late = [type(u).__name__ for u in module.train_units if encoders & set(u.onload_model_names or ())]
    if late:
        raise ConfigError(f"--cache_dir: units {late} need the frozen encoders at train time; train without a cache")


def build_cache(module, dataset, cache_dir: str, info: dict, accelerator) -> int:
    """Encode this rank's share of the rows that have no cache file yet; returns how many it encoded."""
    if accelerator.is_main_process:
        os.makedirs(cache_dir, exist_ok=True)
        check_cache_info(cache_dir, info)
        write_json_atomic(os.path.join(cache_dir, INFO_NAME), info)
    accelerator.wait_for_everyone()

    done = 0
    rows = dataset.rows
    todo = [i for i in range(accelerator.process_index, len(rows), accelerator.num_processes)
            if not os.path.isfile(row_file(cache_dir, rows[i]))]
    iterator = todo
    if accelerator.is_main_process and todo:
        from tqdm import tqdm
        iterator = tqdm(todo, desc="cache", unit="clip", dynamic_ncols=True)
    # The units draw noise we drop; keep them off the training RNG so a run is the same with a cache built now or
    # by an earlier run.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        for index in iterator:
            try:
                sample = dataset.load_row(index)
            except DataError as error:
                if not dataset.skip_bad:
                    raise
                logger.warning("--on_bad_sample skip: not caching %s", error)  # CachedDataset drops the row
                continue
            torch_save_atomic(row_file(cache_dir, rows[index]), strip_for_cache(module.encode(sample)))
            done += 1
    accelerator.wait_for_everyone()
    return done


class CachedDataset(torch.utils.data.Dataset):
    """The cached twin of ActionVideoDataset: ``{"cached": (shared, posi, nega), "action", "row"}``."""

    def __init__(self, rows: list[Row], cache_dir: str, repeat: int = 1, skip_missing: bool = False):
        missing = [row.row for row in rows if not os.path.isfile(row_file(cache_dir, row))]
        if missing and not skip_missing:
            raise ConfigError(f"--cache_dir: {len(missing)} row(s) have no cache file, e.g. row {missing[0]}")
        skipped = set(missing)
        self.rows = [row for row in rows if row.row not in skipped]
        if not self.rows:
            raise ConfigError("--cache_dir: no row of the dataset could be cached")
        self.cache_dir, self.repeat = cache_dir, repeat

    def __len__(self) -> int:
        return len(self.rows) * self.repeat

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index % len(self.rows)]
        cached = torch.load(row_file(self.cache_dir, row), map_location="cpu", weights_only=False)
        return {"cached": cached, "action": row.action, "row": row.row}
