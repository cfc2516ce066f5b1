"""training.trainer.schedule: warmup + cosine, stepped once per optimizer step."""
import math

import pytest
import torch

from training.trainer.schedule import WarmupCosine, build_scheduler, total_optimizer_steps, warmup_steps_for


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
