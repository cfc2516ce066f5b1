"""Crash-safe files and full-state checkpoints (``--save_full_state``, ``--resume_from``, ``--max_checkpoints``).

    <output>/checkpoints/step-000010000/
        trainable.safetensors        trainable weights, controller keys without "pipe.action_controller." (seed)
        trainable_full.safetensors   the same with full parameter names (what resume loads)
        optimizer.pt  scheduler.pt   torch state dicts
        rng_state.pt                 python/numpy/torch(/cuda) RNG state of every rank, in rank order
        trainer_state.json           step, epoch, data-order state, world size; written last (completion marker)

Every file is written to a temp file in its folder, fsynced and renamed; a checkpoint is assembled in a hidden
``.step-*.tmp-*`` folder and renamed into place only when complete, so a run killed at any moment leaves the
previous checkpoint untouched and loadable (leftover temp folders are ignored and cleaned up).
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import tempfile
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes

STATE_NAME = "trainer_state.json"
TRAINABLE_NAME = "trainable.safetensors"
TRAINABLE_FULL_NAME = "trainable_full.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
RNG_NAME = "rng_state.pt"
CHECKPOINT_FILES = (TRAINABLE_NAME, TRAINABLE_FULL_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, RNG_NAME, STATE_NAME)
CONTROLLER_PREFIX = "pipe.action_controller."
_STEP_DIR = re.compile(r"^step-(\d{9})$")


# ---- atomic files ------------------------------------------------------------------------------------------
def fsync_dir(folder: str) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + fsync + rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def write_json_atomic(path: str, data) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def torch_save_atomic(path: str, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def safetensors_save_atomic(path: str, state: dict) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    write_bytes_atomic(path, save_safetensors_bytes(tensors))


def make_files_durable(folder: str) -> None:
    """fsync every file in ``folder`` (for files written by code we do not own) and the folder itself."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)


# ---- RNG ---------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- checkpoints -------------------------------------------------------------------------------------------
def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def split_trainable(full_state: dict) -> dict:
    """The seed's ``trainable.safetensors``: controller keys lose their ``pipe.action_controller.`` prefix."""
    return {(k[len(CONTROLLER_PREFIX):] if k.startswith(CONTROLLER_PREFIX) else k): v for k, v in full_state.items()}


def save_checkpoint(root: str, step: int, trainable_full: dict, optimizer_state: dict, scheduler_state: dict,
                    rng_states: list, trainer_state: dict,
                    extra_writer: Optional[Callable[[str], None]] = None) -> str:
    """Write ``root/step-<step>/`` atomically (see module docstring); returns its path."""
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, step_dir_name(step))
    tmp = tempfile.mkdtemp(prefix=f".{step_dir_name(step)}.tmp-", dir=root)
    try:
        safetensors_save_atomic(os.path.join(tmp, TRAINABLE_NAME), split_trainable(trainable_full))
        safetensors_save_atomic(os.path.join(tmp, TRAINABLE_FULL_NAME), trainable_full)
        torch_save_atomic(os.path.join(tmp, OPTIMIZER_NAME), optimizer_state)
        torch_save_atomic(os.path.join(tmp, SCHEDULER_NAME), scheduler_state)
        torch_save_atomic(os.path.join(tmp, RNG_NAME), rng_states)
        if extra_writer is not None:
            extra_writer(tmp)
        write_json_atomic(os.path.join(tmp, STATE_NAME), {**trainer_state, "step": step})  # last: marks complete
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def replace_dir(tmp: str, final: str) -> None:
    """Move the finished folder ``tmp`` to ``final``, swapping out (then deleting) any folder already there."""
    root = os.path.dirname(final)
    if os.path.exists(final):  # re-saving a step (resumed from an older checkpoint): swap, then delete the old
        trash = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=root)
        os.replace(final, os.path.join(trash, "old"))
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)


def is_complete(folder: str) -> bool:
    state_path = os.path.join(folder, STATE_NAME)
    if not os.path.isfile(state_path):
        return False
    try:
        with open(state_path) as handle:
            json.load(handle)
    except (OSError, json.JSONDecodeError):
        return False
    return all(os.path.isfile(os.path.join(folder, name)) for name in CHECKPOINT_FILES)


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        path = os.path.join(root, name)
        if match and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def clean_temp_dirs(root: str) -> list[str]:
    """Remove the leftovers of interrupted writes (hidden ``.step-*`` folders); returns their names."""
    if not os.path.isdir(root):
        return []
    removed = [name for name in os.listdir(root) if name.startswith(".step-")]
    for name in removed:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return removed


def rotate_checkpoints(root: str, keep: Optional[int]) -> list[str]:
    """Delete all but the newest ``keep`` complete checkpoints; returns the deleted paths."""
    if keep is None:
        return []
    doomed = [path for _, path in list_checkpoints(root)[:-keep]] if keep > 0 else []
    for path in doomed:
        # Hide first (atomic rename) so a kill mid-delete never leaves a half-deleted "complete" checkpoint.
        hidden = os.path.join(root, f".{os.path.basename(path)}.del-{os.getpid()}")
        os.replace(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return doomed


def resolve_resume(resume_from: Optional[str], root: str) -> Optional[str]:
    """``latest`` -> newest complete checkpoint under ``root`` (None when there is none); a path must be a
    complete checkpoint. Raises ValueError naming --resume_from otherwise."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = list_checkpoints(root)
        return found[-1][1] if found else None
    if not os.path.isdir(resume_from):
        raise ValueError(f"--resume_from: {resume_from!r} is not a folder "
                         "(pass a checkpoints/step-* folder or 'latest')")
    if not is_complete(resume_from):
        missing = [n for n in CHECKPOINT_FILES if not os.path.isfile(os.path.join(resume_from, n))]
        raise ValueError(f"--resume_from: {resume_from!r} is not a complete checkpoint (missing {missing})")
    return resume_from


def load_checkpoint(folder: str) -> dict:
    """Everything ``save_checkpoint`` wrote, on CPU."""
    with open(os.path.join(folder, STATE_NAME)) as handle:
        trainer_state = json.load(handle)
    return {
        "trainer_state": trainer_state,
        "trainable_full": load_file(os.path.join(folder, TRAINABLE_FULL_NAME)),
        "optimizer": torch.load(os.path.join(folder, OPTIMIZER_NAME), map_location="cpu", weights_only=False),
        "scheduler": torch.load(os.path.join(folder, SCHEDULER_NAME), map_location="cpu", weights_only=False),
        "rng_states": torch.load(os.path.join(folder, RNG_NAME), map_location="cpu", weights_only=False),
    }
