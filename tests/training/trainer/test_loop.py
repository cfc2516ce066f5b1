"""training.trainer.loop: gradient accumulation equals the big batch."""
import pytest
import torch

from training.trainer.loop import LoopSettings, Trainer
from training.trainer.schedule import build_scheduler


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
