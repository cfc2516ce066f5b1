"""The two training stages of the toy world (see ``training.toyworld``), each a ``forward(batch) -> loss`` module
driven by the training package's loop (``training.trainer.loop.Trainer``) with its warmup-cosine schedule.

    VaeStage  the Wan2.2 ``VideoVAE38_`` (reduced width, z_dim 48) trained for reconstruction. The wrapper's fixed
              Wan2.2 latent mean/std normalise the latents, so a small moment penalty keeps the *normalised*
              latents near zero mean / unit std per channel (what the flow-matching stage expects), and the
              decoder sees slightly noised latents (robust to imperfect denoising). ``thumbnail_weight`` > 0
              pulls the latents towards ``thumbnail_latents`` (each frame's 8x8-pixel means): a code of the
              latent's own size that keeps the motion, which a tiny VAE trained on pixels alone does not find.
              With ``code_latents`` the code *is* the latent space: the decoder learns to decode the code and the
              encoder to produce it (two separate losses), so the DiT can train on the code before the VAE exists.
    DitStage  the TI2V ``WanModel`` + action controller with diffsynth's ``FlowMatchSFTLoss`` through the pipeline's
              ``model_fn`` (fused first frame excluded from the loss, per-token timestep); ``cond_noise`` > 0 adds
              N(0, U(0, cond_noise)^2) to that first frame's latent, so the model does not trust it pixel for pixel.
    CausalDitStage  the same DiT + controller trained block-causally (``training.trainer.forcing``: diffusion
              forcing, teacher forcing with noised context and an error buffer) for a causal world's streams.
    DecoderStage  the VAE decoder alone, after the DiT: sharper frames, same latent space.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffsynth.diffusion.loss import FlowMatchSFTLoss

from models.options import CausalSettings
from training.trainer.forcing import ErrorBuffer, ForcingConfig, causal_loss

LATENT_NOISE = 0.05  # std of the noise added to normalised latents before decoding (VAE stage)
MOMENT_WEIGHT = 0.05
THUMBNAIL_SCALE = 2.0  # pixel means in [-1, 1] have a std of ~0.5: x 2 brings them near the unit std expected


def to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (B, N, H, W, 3) -> float (B, 3, N, H, W) in [-1, 1] (the pipeline's preprocessing)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return x.permute(0, 4, 1, 2, 3).contiguous()


def batch_indices(seed: int, stage: int, step: int, count: int, batch_size: int) -> np.ndarray:
    """The clip indices of one step: a pure function of (seed, stage, step), so a resumed run sees the same data."""
    return np.random.default_rng([seed, stage, step]).choice(count, size=batch_size, replace=False)


class StepBatches:
    """An iterator of batches for steps ``start, start+1, ...`` (resumable: no hidden state besides the step)."""

    def __init__(self, make_batch, start: int):
        self.make_batch, self.step = make_batch, start

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.make_batch(self.step)
        self.step += 1
        return batch


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, motion_weight: float = 0.0) -> torch.Tensor:
    """MSE + 0.5 L1 on (B, 3, F, H, W) videos, plus ``motion_weight`` x L1 on their frame-to-frame differences:
    a decoder that makes one blurry average of a latent frame's 4 frames loses the motion the evaluation reads."""
    loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
    if motion_weight > 0 and x.shape[2] > 1:
        loss = loss + motion_weight * F.l1_loss(recon.diff(dim=2), x.diff(dim=2))  # (B, 3, F-1, H, W) each
    return loss


def thumbnail_latents(x: torch.Tensor) -> torch.Tensor:
    """The latent-shaped thumbnail code of a (B, 3, 1+4k, H, W) video in [-1, 1] (H, W multiples of 16):
    (B, 48, 1+k, H/16, W/16). Latent 0 (frame 0 alone) holds frame 0's 4x4-pixel means, 16 per cell; latent t >= 1
    holds each of frames 4t-3..4t's 8x8-pixel means, 4 per cell and frame (channels: frame-major, then the 2x2
    sub-cell, then RGB, as ``pixel_unshuffle`` lays them out), times THUMBNAIL_SCALE."""
    first = F.pixel_unshuffle(F.avg_pool2d(x[:, :, 0], 4), 4)[:, :, None]  # (B, 48, 1, h, w)
    rest = x[:, :, 1:]  # (B, 3, 4k, H, W)
    batch, _, frames, height, width = rest.shape
    means = F.avg_pool3d(rest, (1, 8, 8)).transpose(1, 2).reshape(batch * frames, 3, height // 8, width // 8)
    cells = F.pixel_unshuffle(means, 2)  # (B*4k, 12, h, w)
    cells = cells.reshape(batch, frames // 4, 48, height // 16, width // 16).transpose(1, 2)  # (B, 48, k, h, w)
    return THUMBNAIL_SCALE * torch.cat([first, cells], dim=2)  # (B, 48, 1+k, h, w)


class VaeStage(torch.nn.Module):
    def __init__(self, vae, motion_weight: float = 0.0, thumbnail_weight: float = 0.0, code_latents: bool = False):
        super().__init__()
        self.vae = vae  # the WanVideoVAE38 wrapper: .model is trained, .scale normalises
        self.model = vae.model
        self.motion_weight, self.thumbnail_weight, self.code_latents = motion_weight, thumbnail_weight, code_latents
        self.model.train().requires_grad_(True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x, self.vae.scale)  # normalised latents (B, 48, f, h, w)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """What the DiT learns and the decoder decodes: the encoder's latents, or the code itself."""
        return thumbnail_latents(x) if self.code_latents else self.encode(x)  # (B, 48, f, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode(x)
        if self.code_latents:  # decoder: code -> frames; encoder: frames -> code (disjoint parameters)
            code = thumbnail_latents(x)  # (B, 48, f, h, w)
            recon = self.model.decode(code + LATENT_NOISE * torch.randn_like(code), self.vae.scale)
            return reconstruction_loss(recon, x, self.motion_weight) + F.mse_loss(z, code)
        recon = self.model.decode(z + LATENT_NOISE * torch.randn_like(z), self.vae.scale)
        moments = z.transpose(0, 1).flatten(1)  # (48, B*f*h*w)
        reg = moments.mean(1).pow(2).mean() + (moments.std(1) - 1.0).pow(2).mean()
        loss = reconstruction_loss(recon, x, self.motion_weight) + MOMENT_WEIGHT * reg
        if self.thumbnail_weight > 0:
            loss = loss + self.thumbnail_weight * F.mse_loss(z, thumbnail_latents(x))  # (B, 48, f, h, w) each
        return loss


class DecoderStage(VaeStage):
    """The VAE decoder alone (``conv2`` + ``decoder``) fine-tuned for reconstruction after the DiT stage: the
    latent space the DiT learned (the encoder's, or with ``code_latents`` the code) stays as it was, so only the
    picture gets sharper."""

    def __init__(self, vae, motion_weight: float = 0.0, code_latents: bool = False):
        super().__init__(vae, motion_weight, code_latents=code_latents)
        self.model.requires_grad_(False)
        for part in (self.model.conv2, self.model.decoder):
            part.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.latents(x)  # (B, 48, f, h, w)
        recon = self.model.decode(z + LATENT_NOISE * torch.randn_like(z), self.vae.scale)  # (B, 3, F, H, W)
        return reconstruction_loss(recon, x, self.motion_weight)


class DitStage(torch.nn.Module):
    """Flow-matching loss of the DiT + controller on cached latents; ``batch`` = (latents, context, binary, magn)."""

    def __init__(self, pipe, controller, cond_noise: float = 0.0):
        super().__init__()
        self.pipe, self.cond_noise = pipe, cond_noise
        self.dit, self.controller = pipe.dit, controller
        pipe.action_controller = controller
        self.dit.train().requires_grad_(True)
        self.controller.train().requires_grad_(True)
        pipe.scheduler.set_timesteps(1000, training=True)

    def forward(self, batch) -> torch.Tensor:
        latents, context, binary, magnitude = batch
        if not self.pipe.scheduler.training:
            self.pipe.scheduler.set_timesteps(1000, training=True)
        first = latents[:, :, :1].clone()  # (B, 48, 1, h, w)
        if self.cond_noise > 0:  # an autoregressive flight starts each chunk from a blurry generated frame
            sigma = self.cond_noise * torch.rand(len(first), 1, 1, 1, 1)  # (B, 1, 1, 1, 1)
            first = first + sigma * torch.randn_like(first)
        return FlowMatchSFTLoss(
            self.pipe, input_latents=latents, first_frame_latents=first, context=context,
            action_binary=binary, action_magnitude=magnitude, fuse_vae_embedding_in_latents=True,
            max_timestep_boundary=1.0, min_timestep_boundary=0.0)


class CausalDitStage(torch.nn.Module):
    """Block-causal flow-matching loss of the DiT + controller; ``batch`` = (latents (B, C, F, h, w) of sink +
    window clips, context, binary, magnitude). Keeps the error buffer of recent prediction residuals."""

    def __init__(self, pipe, controller, settings: CausalSettings, forcing: ForcingConfig):
        super().__init__()
        self.pipe, self.settings, self.forcing = pipe, settings, forcing
        self.dit, self.controller = pipe.dit, controller
        self.errors = ErrorBuffer(forcing.error_buffer)
        pipe.action_controller = controller
        self.dit.train().requires_grad_(True)
        self.controller.train().requires_grad_(True)
        pipe.scheduler.set_timesteps(1000, training=True)

    def forward(self, batch, forcing: ForcingConfig | None = None) -> torch.Tensor:
        # sample_window's adjacent (B,) and next actions (B, F, A) x 2 follow, when given
        latents, context, binary, magnitude, *window = batch
        adjacent, ahead_binary, ahead_magnitude = (window + [None] * 3)[:3]
        if not self.pipe.scheduler.training:
            self.pipe.scheduler.set_timesteps(1000, training=True)
        forcing = forcing or self.forcing
        errors = self.errors if forcing.error_prob > 0 else None
        return causal_loss(self.dit, self.controller, self.pipe.scheduler, latents, context, binary, magnitude,
                           self.settings, forcing, errors, adjacent=adjacent, ahead_binary=ahead_binary,
                           ahead_magnitude=ahead_magnitude)


@torch.no_grad()
def encode_clips(stage: VaeStage, frames: np.ndarray, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Normalised latents (N, 48, f, h, w) of uint8 clips (N, F, H, W, 3): the trained encoder's, or the code."""
    from tqdm import tqdm
    stage.model.eval()
    out = []
    for start in tqdm(range(0, len(frames), batch_size), desc="encode", unit="batch", disable=not progress):
        out.append(stage.latents(to_video_tensor(frames[start:start + batch_size])))
    return torch.cat(out)


@torch.no_grad()
def reconstruction_psnr(stage: VaeStage, frames: np.ndarray, batch_size: int = 4) -> float:
    """Mean PSNR (dB, pixels in [0, 1]) of encode -> decode over clips (N, F, H, W, 3)."""
    stage.model.eval()
    psnrs = []
    for start in range(0, len(frames), batch_size):
        x = to_video_tensor(frames[start:start + batch_size])
        recon = stage.model.decode(stage.encode(x), stage.vae.scale).clamp(-1, 1)
        mse = ((recon - x) / 2).pow(2).flatten(1).mean(1)  # per clip, [0, 1] scale
        psnrs += (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).tolist()
    return float(np.mean(psnrs))
