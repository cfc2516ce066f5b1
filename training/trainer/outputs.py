"""What a run writes and reads back: the inference artifacts (atomically) and full-state checkpoints.

Only rank 0 writes files. Gathering the RNG states of all ranks is collective, so ``save_full_state`` is called on
every rank. Under DeepSpeed the optimizer state is sharded: each rank then also writes its shard through
``accelerator.save_state`` into the checkpoint's ``deepspeed/`` folder (not exercised by the CPU tests).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Optional

from models.artifacts import CONFIG_NAME, ArtifactConfig, save_action_artifacts
from training.trainer import checkpoint as ckpt
from training.trainer.schedule import WarmupCosine

logger = logging.getLogger(__name__)
DEEPSPEED_DIR = "deepspeed"


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def write_config_atomic(folder: str, config: ArtifactConfig) -> None:
    ckpt.write_json_atomic(os.path.join(folder, CONFIG_NAME), config.to_dict())


def write_artifacts_atomic(folder: str, controller, config: ArtifactConfig, lora_state: Optional[dict]) -> None:
    """models.artifacts.save_action_artifacts into a hidden temp folder, fsync, then rename each file into place
    (the JSON last), so a reader never sees a half-written file."""
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".artifacts.tmp-", dir=folder)
    try:
        save_action_artifacts(tmp, controller, config, lora_state or None)
        ckpt.make_files_durable(tmp)
        for name in sorted(os.listdir(tmp), key=lambda n: n == CONFIG_NAME):
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))
        ckpt.fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_full_state(accelerator, module, optimizer, scheduler, root: str, step: int, trainer_state: dict,
                    max_checkpoints: Optional[int]) -> Optional[str]:
    """Collective. Rank 0 writes ``root/step-<step>/`` and rotates; returns its path on rank 0."""
    from accelerate.utils import broadcast_object_list, gather_object

    rng_states = gather_object([ckpt.capture_rng_state()])  # one entry per rank, in rank order
    extra_writer = None
    if is_deepspeed(accelerator):
        shard_dir = [tempfile.mkdtemp(prefix=".deepspeed.tmp-", dir=root) if accelerator.is_main_process else None]
        broadcast_object_list(shard_dir)
        accelerator.save_state(shard_dir[0], exclude_frozen_parameters=True)  # every rank writes its shard
        accelerator.wait_for_everyone()
        extra_writer = lambda tmp: os.replace(shard_dir[0], os.path.join(tmp, DEEPSPEED_DIR))  # noqa: E731
    path = None
    if accelerator.is_main_process:
        optimizer_state = {"deepspeed": DEEPSPEED_DIR} if extra_writer else optimizer.state_dict()
        path = ckpt.save_checkpoint(root, step, module.trainable_state(), optimizer_state, scheduler.state_dict(),
                                    rng_states, trainer_state, extra_writer=extra_writer)
        for old in ckpt.rotate_checkpoints(root, max_checkpoints):
            logger.info("removed old checkpoint %s (--max_checkpoints %s)", old, max_checkpoints)
    accelerator.wait_for_everyone()
    return path


def load_full_state(folder: str, module, optimizer, scheduler, factor: WarmupCosine) -> dict:
    """Before ``accelerator.prepare``: weights, optimizer and scheduler from ``folder``; returns the checkpoint
    (trainer_state, rng_states) for the caller to finish the resume."""
    data = ckpt.load_checkpoint(folder)
    module.load_trainable_state(data["trainable_full"], folder)
    if "deepspeed" not in data["optimizer"]:
        optimizer.load_state_dict(data["optimizer"])
    scheduler.load_state_dict(data["scheduler"])
    saved = dict(scheduler.lr_lambdas[0].__dict__)
    scheduler.lr_lambdas[0].__dict__.update(factor.__dict__)  # the current flags define the schedule
    if saved != factor.__dict__:
        logger.warning("resume: the schedule changed (%s -> %s); continuing with the new one", saved, factor.__dict__)
    return data


def restore_rngs(accelerator, data: dict, world_size_changed: bool) -> bool:
    """Per-rank RNG from the checkpoint; returns False (and reseeds) when the world size changed."""
    if world_size_changed or len(data["rng_states"]) != accelerator.num_processes:
        return False
    ckpt.restore_rng_state(data["rng_states"][accelerator.process_index])
    return True


def load_deepspeed_shards(accelerator, folder: str) -> None:
    path = os.path.join(folder, DEEPSPEED_DIR)
    if is_deepspeed(accelerator):
        if not os.path.isdir(path):
            raise ValueError(f"--resume_from: {folder} has no {DEEPSPEED_DIR}/ (it was not written under DeepSpeed)")
        accelerator.load_state(path, load_module_strict=False)  # the shards hold no frozen base weights
    elif os.path.isdir(path):
        raise ValueError(f"--resume_from: {folder} was written under DeepSpeed; resume it under DeepSpeed")


def wandb_logger(c, accelerator):
    """A ``log(metrics)`` function for wandb, or None (not asked, not main, or wandb missing: a warning)."""
    if not c.use_wandb or not accelerator.is_main_process:
        return None
    try:
        import wandb
    except ImportError:
        logger.warning("--use_wandb: wandb is not installed (pip install wandb); logging to the console only")
        return None
    run = wandb.init(project=c.wandb_project, name=c.wandb_run_name, config=c.to_dict())
    return lambda metrics: run.log({k: v for k, v in metrics.items() if v is not None}, step=metrics["step"])

