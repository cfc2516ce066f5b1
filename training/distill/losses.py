"""The distillation losses, the optional patch discriminator and the EMA of the student's weights.

Axis legend: B batch, T video frames, H/W pixels; videos are (B, 3, T, H, W) in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_losses(pred: torch.Tensor, target: torch.Tensor, l1: float = 1.0, mse: float = 1.0,
                 motion: float = 1.0) -> dict:
    """{"l1", "mse", "motion", "total"}: L1 and MSE to the teacher's frames, and L1 between their frame-to-frame
    differences (a decoder that blurs a latent frame's 4 frames into one average loses the motion)."""
    out = {"l1": F.l1_loss(pred, target), "mse": F.mse_loss(pred, target)}
    out["motion"] = F.l1_loss(pred.diff(dim=2), target.diff(dim=2)) if pred.shape[2] > 1 else pred.new_zeros(())
    out["total"] = l1 * out["l1"] + mse * out["mse"] + motion * out["motion"]
    return out


class PatchDiscriminator(torch.nn.Module):
    """Real (the teacher's) or not, per patch of a frame: strided 4x4 convs, one logit per patch (hinge loss)."""

    def __init__(self, width: int = 32, layers: int = 3):
        super().__init__()
        convs, channels = [], 3
        for i in range(layers):
            convs += [torch.nn.Conv2d(channels, width * 2 ** i, 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2)]
            channels = width * 2 ** i
        convs.append(torch.nn.Conv2d(channels, 1, 3, padding=1))
        self.net = torch.nn.Sequential(*convs)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> logits (B*T, 1, H/2^layers, W/2^layers)."""
        return self.net(video.transpose(1, 2).flatten(0, 1))


def discriminator_loss(disc: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake.detach())).mean()


def generator_loss(disc: PatchDiscriminator, fake: torch.Tensor) -> torch.Tensor:
    return -disc(fake).mean()


class Ema:
    """An exponential moving average of a module's parameters (the weights the recipe writes). The decay ramps up
    over the first steps, ``min(decay, (1 + step) / (10 + step))``, so early averages do not keep the random init."""

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, value in module.state_dict().items():
            self.shadow[name].lerp_(value.detach(), 1 - decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.shadow = state["decay"], {k: v.clone() for k, v in state["shadow"].items()}


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR (dB) of two uint8 or [0, 255] tensors."""
    mse = (pred.float() - target.float()).pow(2).mean().clamp_min(1e-10)
    return float(10 * torch.log10(255.0 ** 2 / mse))
