"""Learning-rate schedule: linear warmup, then cosine decay to a floor (the seed's --lr_warmup_ratio/--lr_min_lr).

Step s (0-based optimizer step) uses
    s <  W:  lr * (s + 1) / W                                      (the first step already moves the weights)
    s >= W:  min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / (S - W))) / 2
with W = ceil(warmup_ratio * S) and S = total optimizer steps: the first post-warmup step is at ``lr`` and the decay
reaches ``min_lr`` when training ends (so with min_lr = 0 no step is taken at lr 0). Steps past S stay at min_lr.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class WarmupCosine:
    """A picklable LambdaLR factor (so ``scheduler.pt`` round-trips); returns lr(step) / base_lr."""
    total_steps: int
    warmup_steps: int
    base_lr: float
    min_lr: float = 0.0

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be within 0..{self.total_steps}, got {self.warmup_steps}")
        if self.base_lr <= 0 or not 0 <= self.min_lr <= self.base_lr:
            raise ValueError(f"need 0 <= min_lr <= base_lr and base_lr > 0, got {self.min_lr}, {self.base_lr}")

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps <= 0:
            return self.base_lr if step < self.total_steps else self.min_lr
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.lr(step) / self.base_lr


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return min(total_steps, math.ceil(warmup_ratio * total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, base_lr: float,
                    min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over ``optimizer``; call ``.step()`` once per optimizer step (not per micro-batch)."""
    factor = WarmupCosine(total_steps, warmup_steps_for(total_steps, warmup_ratio), base_lr, min_lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_optimizer_steps(max_steps: int | None, num_epochs: int, samples_per_epoch: int, world_size: int,
                          accumulation: int) -> int:
    """``max_steps`` when given, else enough steps for ``num_epochs`` passes over the data by all processes."""
    if max_steps is not None:
        return max_steps
    per_step = world_size * accumulation
    return max(1, math.ceil(num_epochs * samples_per_epoch / per_step))
