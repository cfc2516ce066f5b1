"""The generic loop and the LR schedule, on deterministic toy problems."""
import math

import pytest
import torch

from training.schedule import WarmupCosine, build_scheduler, total_optimizer_steps, warmup_steps_for
from training.trainer import LoopSettings, Trainer


def test_warmup_then_cosine_values():
    schedule = WarmupCosine(total_steps=10, warmup_steps=2, base_lr=1e-3, min_lr=1e-5)
    lrs = [schedule.lr(step) for step in range(12)]
    expected = [5e-4, 1e-3] + [1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)] \
        + [1e-5, 1e-5]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[2] == pytest.approx(1e-3)  # the peak right after warmup
    assert lrs[9] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 7 / 8)))  # last step
    assert lrs[9] > 1e-5 and lrs[10] == 1e-5  # the decay reaches the floor as training ends
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # monotone decay after warmup


def test_scheduler_drives_the_optimizer_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=2e-4)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_ratio=0.1, base_lr=2e-4, min_lr=0.0)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert warmup_steps_for(20, 0.1) == 2
    assert seen[:3] == pytest.approx([1e-4, 2e-4, 2e-4])
    assert seen[-1] == pytest.approx(2e-4 * 0.5 * (1 + math.cos(math.pi * 17 / 18))) and seen[-1] > 0
    assert optimizer.param_groups[0]["lr"] == 0.0  # where the decay ends
    state = scheduler.state_dict()
    assert state["last_epoch"] == 20 and state["lr_lambdas"][0]["total_steps"] == 20  # picklable factor


def test_total_steps_from_epochs():
    assert total_optimizer_steps(None, num_epochs=2, samples_per_epoch=10, world_size=2, accumulation=3) == 4
    assert total_optimizer_steps(7, num_epochs=2, samples_per_epoch=10, world_size=2, accumulation=3) == 7
    with pytest.raises(ValueError):
        WarmupCosine(total_steps=0, warmup_steps=0, base_lr=1e-3)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, batch):
        x, y = batch
        return ((self.linear(x) - y) ** 2).mean()


def train_toy(accumulation, batches, steps, sgd):
    from accelerate import Accelerator

    accelerator = Accelerator(gradient_accumulation_steps=accumulation, cpu=True)
    model = Toy()
    # SGD without clipping is sensitive to the gradient's scale (a missing 1/accumulation shows); AdamW with
    # clipping (the real setup) is scale-invariant but exercises the clip-on-the-accumulated-gradient path.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if sgd else \
        torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    scheduler = build_scheduler(optimizer, steps, 0.5, 0.1, 0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    settings = LoopSettings(max_steps=steps, accumulation=accumulation, max_grad_norm=0.0 if sgd else 0.05,
                            log_steps=100, progress_bar=False)
    state = Trainer(accelerator, model, optimizer, scheduler, iter(batches), settings).run()
    return accelerator.unwrap_model(model).linear, state


@pytest.mark.parametrize("sgd", [True, False], ids=["sgd", "adamw_clipped"])
def test_gradient_accumulation_equals_the_big_batch(sgd):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=generator), torch.randn(8, 1, generator=generator)
    small = [(x[i:i + 1], y[i:i + 1]) for i in range(8)]  # 4 micro-batches per step, 2 steps
    big = [(x[0:4], y[0:4]), (x[4:8], y[4:8])]  # the same samples as one batch per step
    accumulated, state_a = train_toy(4, small, steps=2, sgd=sgd)
    batched, state_b = train_toy(1, big, steps=2, sgd=sgd)
    assert state_a.step == state_b.step == 2 and state_a.samples == 8 and state_b.samples == 2
    assert torch.allclose(accumulated.weight, batched.weight, atol=1e-6, rtol=0)
    assert torch.allclose(accumulated.bias, batched.bias, atol=1e-6, rtol=0)
    assert not torch.allclose(accumulated.weight, Toy().linear.weight)  # it did train
