"""The optimisation loop on accelerate, independent of Wan (the toy tests drive it with a Linear model).

One optimizer step = ``accumulation`` micro-batches per process (``accelerator.accumulate`` skips the gradient
all-reduce until the last one), then gradient clipping, ``optimizer.step()``, ``scheduler.step()`` (our LambdaLR is
not prepared: accelerate would step it once per process) and ``zero_grad``. Checkpoints are taken only at optimizer
step boundaries, so a resumed run restarts with an empty accumulation window, exactly like the straight run.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

logger = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    max_steps: int
    accumulation: int = 1
    max_grad_norm: float = 0.0  # 0 disables clipping
    log_steps: int = 10
    save_steps: Optional[int] = None
    progress_bar: bool = True


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    samples: int = 0  # global samples consumed (all ranks): the data-order state
    losses: list = field(default_factory=list)  # per step: this process's mean micro-batch loss


@dataclass
class LoopCallbacks:
    """Hooks the Wan trainer fills in; every callback is called on every rank (they may be collective)."""
    on_log: Callable[[dict], None] = lambda metrics: None
    on_save: Callable[[int], None] = lambda step: None  # every save_steps, not at the end
    epoch_of: Callable[[int], float] = lambda samples: 0.0


class Trainer:
    def __init__(self, accelerator, model, optimizer, scheduler, batches: Iterator, settings: LoopSettings,
                 state: Optional[LoopState] = None, callbacks: Optional[LoopCallbacks] = None):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.batches, self.settings = batches, settings
        self.state = state or LoopState()
        self.callbacks = callbacks or LoopCallbacks()
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: the model has no parameter with requires_grad")

    # ---- one optimizer step ------------------------------------------------------------------------------
    def micro_step(self, batch) -> float:
        with self.accelerator.accumulate(self.model):
            loss = self.model(batch)
            if not torch.isfinite(loss.detach()).all():
                raise FloatingPointError(f"loss is {loss.item()} at step {self.state.step + 1}")
            self.accelerator.backward(loss)  # divides by the accumulation steps
        return float(loss.detach())

    def optimizer_step(self) -> Optional[float]:
        grad_norm = None
        if self.settings.max_grad_norm > 0 and self.accelerator.sync_gradients:
            norm = self.accelerator.clip_grad_norm_(self.params, self.settings.max_grad_norm)
            grad_norm = None if norm is None else float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def train_step(self) -> tuple[float, Optional[float]]:
        losses = [self.micro_step(next(self.batches)) for _ in range(self.settings.accumulation)]
        if not self.accelerator.sync_gradients:  # our counter and accelerate's disagree: never silently
            raise RuntimeError("accumulation window out of sync with accelerate's gradient state")
        grad_norm = self.optimizer_step()
        self.state.step += 1
        self.state.samples += self.settings.accumulation * self.accelerator.num_processes
        self.state.losses.append(sum(losses) / len(losses))
        return self.state.losses[-1], grad_norm

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self) -> LoopState:
        s = self.settings
        bar = self._progress_bar()
        window = _Window(self.state.step, self.state.samples)
        while self.state.step < s.max_steps:
            lr = self.current_lr()
            loss, grad_norm = self.train_step()
            window.add(loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if self.state.step % s.log_steps == 0 or self.state.step == s.max_steps:
                self.callbacks.on_log(self._metrics(window, lr, grad_norm))
                window = _Window(self.state.step, self.state.samples)
            if s.save_steps and self.state.step % s.save_steps == 0 and self.state.step < s.max_steps:
                self.callbacks.on_save(self.state.step)
        if bar is not None:
            bar.close()
        return self.state

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _metrics(self, window: "_Window", lr: float, grad_norm: Optional[float]) -> dict:
        # Mean loss over the window and over all processes (a collective: every rank logs at the same steps).
        device = self.accelerator.device
        totals = self.accelerator.reduce(torch.tensor([window.loss_sum, window.count], device=device,
                                                      dtype=torch.float64), reduction="sum")
        elapsed = max(time.perf_counter() - window.start_time, 1e-9)
        steps = self.state.step - window.start_step
        return {"step": self.state.step, "loss": float(totals[0] / max(float(totals[1]), 1.0)), "lr": lr,
                "grad_norm": grad_norm, "step_time": elapsed / max(steps, 1),
                "samples_per_s": (self.state.samples - window.start_samples) / elapsed,
                "epoch": self.callbacks.epoch_of(self.state.samples)}

    def _progress_bar(self):
        if not (self.settings.progress_bar and self.accelerator.is_main_process):
            return None
        from tqdm import tqdm
        return tqdm(total=self.settings.max_steps, initial=self.state.step, desc="train", unit="step",
                    dynamic_ncols=True)


class _Window:
    """Accumulates the losses between two log lines."""

    def __init__(self, step: int, samples: int):
        self.start_step, self.start_samples, self.start_time = step, samples, time.perf_counter()
        self.loss_sum, self.count = 0.0, 0

    def add(self, loss: float) -> None:
        if math.isfinite(loss):
            self.loss_sum += loss
            self.count += 1


def format_metrics(metrics: dict) -> str:
    parts = [f"step {metrics['step']}", f"loss {metrics['loss']:.5f}", f"lr {metrics['lr']:.3e}"]
    if metrics.get("grad_norm") is not None:
        parts.append(f"grad_norm {metrics['grad_norm']:.3f}")
    parts += [f"step_time {metrics['step_time']:.3f}s", f"samples/s {metrics['samples_per_s']:.2f}",
              f"epoch {metrics['epoch']:.2f}"]
    return " | ".join(parts)
