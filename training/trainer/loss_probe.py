"""Does a model use its actions? The flow-matching loss with the true actions vs the same model fed shuffled actions
(item i gets item i+1's), at identical noise and timesteps. A ratio < 1 means the actions carry signal the model
learned to use; an untrained controller (or one that ignores its input) gives ~1. The paired difference and its
standard error say whether a ratio near 1 is more than noise. One probe for the trainer's runs
(``python -m training.trainer_eval``) and the small-world recipe's held-out report.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from models.action_format import num_actions_for_frames
from training.data.dataset import ActionVideoDataset, read_metadata, validate_rows
from training.trainer.config import TrainConfig, controller_config, metadata_path
from training.trainer.module import (
    ActionTrainingModule,
    build_controller,
    build_pipeline,
    resolve_dtype,
    strip_for_cache,
)


@torch.no_grad()
def true_vs_shuffled(loss: Callable[[int, object], torch.Tensor], actions: Sequence, draws: int = 8,
                     seed: int = 0) -> dict:
    """``loss(i, action)`` of every item i with its own ``actions[i]`` and with ``actions[(i + 1) % n]``, ``draws``
    times each; both losses of a draw see the same RNG stream (same timestep and noise)."""
    if len(actions) < 2:
        raise ValueError("the loss probe needs at least 2 items to shuffle actions between")
    true_losses, shuffled_losses = [], []
    for i in range(len(actions)):
        for k in range(draws):
            for action, bucket in ((actions[i], true_losses), (actions[(i + 1) % len(actions)], shuffled_losses)):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed * 1_000_003 + i * 1009 + k)
                    bucket.append(float(loss(i, action)))
    true = torch.tensor(true_losses, dtype=torch.float64)
    shuffled = torch.tensor(shuffled_losses, dtype=torch.float64)
    diff = true - shuffled  # paired: same item, timestep and noise, so small effects are measurable
    return {"loss_true": float(true.mean()), "loss_shuffled": float(shuffled.mean()),
            "ratio": float(true.mean() / shuffled.mean()), "paired_diff": float(diff.mean()),
            "paired_diff_stderr": float(diff.std() / len(diff) ** 0.5), "samples": len(actions),
            "timesteps": draws}


def action_signal(module, samples: list, timesteps: int = 8, seed: int = 0) -> dict:
    """The probe over training samples (``{"cached" | "video", "action", ...}``) of an ActionTrainingModule."""
    return true_vs_shuffled(lambda i, action: module(samples[i], action=action),
                            [sample["action"] for sample in samples], timesteps, seed)


def evaluate_run(c: TrainConfig, timesteps: int, at_init: bool = False) -> dict:
    """Build the base model of ``c``, attach the run's artifacts (or the initial controller) and measure every
    row of its dataset CSV (pass a held-out CSV to measure generalisation)."""
    pipe, _ = build_pipeline(c, "cuda" if torch.cuda.is_available() else "cpu", resolve_dtype(c))
    if at_init:
        controller = build_controller(controller_config(c), c.seed)
    else:
        pipe.load_action_artifacts(c.output_path)  # fuses the LoRA when the run trained one
        controller = pipe.action_controller
    c.lora_base_model, c.lora_checkpoint, c.trainable_models = None, None, "action_controller"
    module = ActionTrainingModule(pipe, controller, c).eval()
    rows, _ = validate_rows(read_metadata(metadata_path(c)), c.dataset_base_path, c.num_frames,
                            num_actions_for_frames(c.num_frames), "skip")
    dataset = ActionVideoDataset(rows, c.dataset_base_path, c.num_frames, c.height, c.width, c.max_pixels)
    samples = []
    for i in range(len(dataset)):  # encode each clip once; the frames are not kept
        sample = dataset[i]
        samples.append({"cached": strip_for_cache(module.encode(sample)), "action": sample["action"]})
    return action_signal(module, samples, timesteps, seed=c.seed)
