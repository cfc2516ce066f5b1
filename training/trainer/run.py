"""One training run, set up and driven by ``TrainingRun`` (``python -m training.train`` is its CLI).

Order matters for exact resumes: everything that draws random numbers for the model (controller init, LoRA init)
happens before the checkpoint's RNG states are restored, and the data order is a pure function of the number of
samples consumed (``training.data.GlobalOrder``). Rank 0 validates the data and writes every file; collective
calls (broadcasts, RNG gathering, barriers) happen on all ranks at the same steps.
"""
from __future__ import annotations

import logging
import os

from models.action_format import num_actions_for_frames
from training.data.dataset import (
    ActionVideoDataset,
    DataError,
    GlobalOrder,
    dataset_action_stats,
    dataset_heading_frame,
    make_loader,
    read_metadata,
    validate_rows,
)
from training.trainer import checkpoint as ckpt
from training.trainer.cache import CachedDataset, build_cache, cache_info, split_units
from training.trainer.config import ConfigError, TrainConfig, controller_config, metadata_path
from training.trainer.loop import LoopCallbacks, LoopSettings, LoopState, Trainer, format_metrics
from training.trainer.module import (
    ActionTrainingModule,
    artifact_config,
    build_controller,
    build_pipeline,
    resolve_dtype,
)
from training.trainer.outputs import (
    load_deepspeed_shards,
    load_full_state,
    restore_rngs,
    save_full_state,
    wandb_logger,
    write_artifacts_atomic,
    write_config_atomic,
)
from training.trainer.schedule import WarmupCosine, build_scheduler, total_optimizer_steps, warmup_steps_for

logger = logging.getLogger("training.train")


def make_accelerator(c: TrainConfig):
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Our controller builds only the parameters its injection type uses: DDP needs no unused-parameter scan.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
    # Several processes (torchrun / `accelerate launch --multi_gpu`) on a machine without CUDA: accelerate only
    # picks its gloo CPU backend when told to use the CPU.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(gradient_accumulation_steps=c.gradient_accumulation_steps, kwargs_handlers=[ddp], cpu=cpu)


def load_rows(c: TrainConfig, accelerator):
    """Rank 0 validates every row (I/O once), everyone gets the same good rows; errors reach every rank."""
    from accelerate.utils import broadcast_object_list



    payload = [None]
    if accelerator.is_main_process:
        try:
            rows = read_metadata(metadata_path(c))
            good, problems = validate_rows(rows, c.dataset_base_path, c.num_frames,
                                           num_actions_for_frames(c.num_frames), c.on_bad_sample,
                                           source=metadata_path(c))
            for problem in problems:
                logger.warning("--on_bad_sample skip: dropping %s", problem)
            payload = [(good, len(rows), None)]
        except (DataError, OSError) as error:
            payload = [(None, 0, f"{type(error).__name__}: {error}" if isinstance(error, OSError) else str(error))]
    broadcast_object_list(payload)
    good, total, error = payload[0]
    if error is not None:
        raise DataError(error)
    if accelerator.is_main_process:
        logger.info("dataset: %d usable rows of %d (%s)", len(good), total, metadata_path(c))
    return good


def build(c: TrainConfig, accelerator):
    """(module on the accelerator's device, base-model info, dtype)."""
    dtype = resolve_dtype(c)
    device = "cpu" if c.initialize_model_on_cpu else accelerator.device
    pipe, base = build_pipeline(c, device, dtype)
    controller = build_controller(controller_config(c), c.seed, c.action_controller_checkpoint)
    module = ActionTrainingModule(pipe, controller, c)
    module.to(device=accelerator.device)
    if accelerator.is_main_process:
        names = sorted({n.split(".")[1] for n, p in module.named_parameters() if p.requires_grad})
        logger.info("trainable parameters: %d float32 (%s)",
                    sum(p.numel() for p in module.parameters() if p.requires_grad), ", ".join(names))
    return module, base, dtype


def make_dataset(c: TrainConfig, rows, module, base, dtype, accelerator):
    raw = ActionVideoDataset(rows, c.dataset_base_path, c.num_frames, c.height, c.width, c.max_pixels,
                             c.dataset_repeat, skip_bad=c.on_bad_sample == "skip")
    if not c.cache_dir:
        return raw
    split_units(module, c)
    encoded = build_cache(module, raw, c.cache_dir, cache_info(c, base, dtype), accelerator)
    if accelerator.is_main_process:
        logger.info("cache: rank 0 encoded %d clip(s) into %s", encoded, c.cache_dir)
    # The frozen encoders are not needed any more: free their memory for the DiT.
    module.pipe.vae = None
    module.pipe.text_encoder = None
    return CachedDataset(rows, c.cache_dir, c.dataset_repeat, skip_missing=c.on_bad_sample == "skip")


class TrainingRun:
    """Set up with validated flags, then ``train()``; returns a summary (final step, per-step losses, paths)."""

    def __init__(self, c: TrainConfig):
        from accelerate.utils import set_seed


        self.c = c
        self.accelerator = make_accelerator(c)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        set_seed(c.seed + self.rank)
        self.root = os.path.join(c.output_path, "checkpoints")
        self.resume_path = self._resume_path()
        rows = load_rows(c, self.accelerator)
        self.stats = dataset_action_stats(rows)
        self.heading_frame = dataset_heading_frame(metadata_path(c))
        self.module, self.base, dtype = build(c, self.accelerator)
        self.dataset = make_dataset(c, rows, self.module, self.base, dtype, self.accelerator)
        self._make_optimizer()
        self.checkpoints, self.loaded, self.trainer = [], None, None

    # ---- set-up ------------------------------------------------------------------------------------------
    def _resume_path(self):
        try:
            path = ckpt.resolve_resume(self.c.resume_from, self.root)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.c.resume_from is None and ckpt.list_checkpoints(self.root):
            raise ConfigError(f"--resume_from: {self.root} already holds checkpoints; pass --resume_from latest to "
                              "continue that run, or choose another --output_path")
        if self.c.resume_from == "latest" and path is None and self.accelerator.is_main_process:
            logger.info("--resume_from latest: no checkpoint in %s, starting fresh", self.root)
        if self.accelerator.is_main_process:
            ckpt.clean_temp_dirs(self.root)
        return path

    def _make_optimizer(self):
        import torch


        c = self.c
        self.total = total_optimizer_steps(c.max_steps, c.num_epochs, len(self.dataset), self.world,
                                           c.gradient_accumulation_steps)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, self.total, c.lr_warmup_ratio, c.learning_rate, c.lr_min_lr)
        self.factor = WarmupCosine(self.total, warmup_steps_for(self.total, c.lr_warmup_ratio), c.learning_rate,
                                   c.lr_min_lr)

    def _load_resume(self):
        """Weights, optimizer, scheduler (before prepare); returns the LoopState to continue from."""
        if self.resume_path is None:
            return LoopState()
        self.loaded = load_full_state(self.resume_path, self.module, self.optimizer, self.scheduler, self.factor)
        saved = self.loaded["trainer_state"]
        logger.info("resuming from %s (step %d)", self.resume_path, saved["step"])
        if saved.get("num_samples") != len(self.dataset) or saved.get("seed") != self.c.seed:
            logger.warning("resume: the dataset size or --seed changed (%s/%s -> %d/%d); the data order differs "
                           "from the original run", saved.get("num_samples"), saved.get("seed"), len(self.dataset),
                           self.c.seed)
        return LoopState(step=saved["step"], samples=saved["samples"])

    def _restore_rngs(self, step: int) -> None:
        """After prepare, right before the loop: the per-rank RNG streams of the checkpoint."""
        from accelerate.utils import set_seed


        if self.loaded is None:
            return
        load_deepspeed_shards(self.accelerator, self.resume_path)
        saved = self.loaded["trainer_state"]
        changed = saved.get("world_size") != self.world or \
            saved.get("gradient_accumulation_steps") != self.c.gradient_accumulation_steps
        if not restore_rngs(self.accelerator, self.loaded, changed):
            logger.warning("resume: world size or accumulation changed; data order continues, RNG is reseeded "
                           "(not bit-exact)")
            set_seed(self.c.seed + self.rank + 7919 * step)

    # ---- outputs -----------------------------------------------------------------------------------------
    def _artifact_config(self, **training):
        info = {"config": self.c.to_dict(), "total_steps": self.total, "world_size": self.world, **training}
        return artifact_config(self.module.pipe.action_controller, self.c, self.base, self.stats, info,
                               self.heading_frame)

    def write_artifacts(self, step: int, status: str) -> None:
        """Rank 0: action_controller.safetensors (+ lora.safetensors) + the JSON, from the current weights."""
        if self.accelerator.is_main_process:
            write_artifacts_atomic(self.c.output_path, self.module.pipe.action_controller,
                                   self._artifact_config(status=status, step=step), self.module.lora_state())

    def trainer_state(self, step: int) -> dict:
        state = self.trainer.state
        return {"step": step, "samples": state.samples, "epoch": state.samples // len(self.dataset),
                "world_size": self.world, "gradient_accumulation_steps": self.c.gradient_accumulation_steps,
                "seed": self.c.seed, "num_samples": len(self.dataset), "total_steps": self.total,
                "loss": state.losses[-1] if state.losses else None}

    def save_checkpoint(self, step: int) -> None:
        path = save_full_state(self.accelerator, self.module, self.optimizer, self.scheduler, self.root, step,
                               self.trainer_state(step), self.c.max_checkpoints)
        if path:
            self.checkpoints.append(path)

    def on_save(self, step: int) -> None:
        if self.c.save_full_state:
            self.save_checkpoint(step)
        self.write_artifacts(step, "running")  # a long run always has usable weights on disk
        self.accelerator.wait_for_everyone()

    # ---- the run -----------------------------------------------------------------------------------------
    def train(self) -> dict:
        c, accelerator = self.c, self.accelerator
        state = self._load_resume()
        start_step = state.step
        if accelerator.is_main_process:  # at start: everything needed to rebuild the run
            os.makedirs(c.output_path, exist_ok=True)
            write_config_atomic(c.output_path, self._artifact_config(status="running", step=start_step))
        model, self.optimizer = accelerator.prepare(self.module, self.optimizer)
        self._restore_rngs(start_step)
        order = GlobalOrder(len(self.dataset), c.seed, self.world, self.rank, start=state.samples)
        batches = iter(make_loader(self.dataset, order, c.dataset_num_workers))
        log_fn = wandb_logger(c, accelerator)

        def on_log(metrics):
            if accelerator.is_main_process:
                from tqdm import tqdm
                tqdm.write(format_metrics(metrics))
                if log_fn is not None:
                    log_fn(metrics)

        settings = LoopSettings(max_steps=self.total, accumulation=c.gradient_accumulation_steps,
                                max_grad_norm=c.max_grad_norm, log_steps=c.log_steps, save_steps=c.save_steps)
        callbacks = LoopCallbacks(on_log=on_log, on_save=self.on_save, epoch_of=lambda s: s / len(self.dataset))
        self.trainer = Trainer(accelerator, model, self.optimizer, self.scheduler, batches, settings, state,
                               callbacks)
        self.trainer.run()
        step = self.trainer.state.step
        if c.save_full_state and step > start_step:
            self.save_checkpoint(step)
        self.write_artifacts(step, "finished")  # after training, from the trained weights
        accelerator.wait_for_everyone()
        if log_fn is not None:
            import wandb
            wandb.finish()
        return {"step": step, "losses": list(self.trainer.state.losses), "output_path": c.output_path,
                "checkpoints": list(self.checkpoints), "world_size": self.world, "total_steps": self.total}
