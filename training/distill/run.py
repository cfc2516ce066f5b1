"""One distillation run (``python -m training.distill_decoder``): a small decoder learns to draw what the world's
VAE decoder draws, from the same latents.

Axis legend: B batch, C latent channels (48), F latent frames, h/w latent grid, T video frames, H/W pixels.

    teacher   the world's pipeline (``--world``, ``--model_dir`` or ``--preset tiny``): its frozen encoder makes the
              latents, its VAE decoder the target frames (``training.distill.data``)
    student   ``models.frames.small_decoder.SmallDecoder`` (a preset or ``--widths/--blocks/--patch``), trained on
              whole clips from their first latent frame (as a stream decodes them: frame 0 alone, then 4 per latent
              frame), losses ``training.distill.losses`` (L1 + MSE + frame differences, optional patch GAN)
    EMA       an exponential moving average of the student's weights: what is written and measured
    resume    a checkpoint (student, EMA, optimizer, scheduler, discriminator, RNG, losses, step) is written
              atomically every ``--save_steps`` and at the end to WORK/distill_state.pt; a rerun with the same WORK
              continues exactly where it stopped (batches are a pure function of the seed and the step)
    measure   held-out clips decoded continuously, latent frame by latent frame, through the stream decoder
              (``SmallStreamDecoder``): PSNR to the teacher's frames (and per quarter of the clip: no drift), to the
              true frames, the largest difference streamed vs one-shot; FLOPs and parameters vs the teacher
    output    OUT/small_decoder.json + OUT/small_decoder.safetensors (``models.frames.small_decoder``) with the
              report and the recipe, and OUT/side_by_side.png (true | teacher | small, held-out frames)
"""
from __future__ import annotations

import json
import logging
import os
import re
import time

import numpy as np
import torch

from models.frames.cost import small_decoder_cost, wan_decoder_cost
from models.frames.small_decoder import (
    PRESETS,
    SmallDecoder,
    SmallDecoderConfig,
    SmallStreamDecoder,
    save_small_decoder,
)
from models.loading import build_pipeline
from models.media import video_to_frames
from models.serve_config import load_serve_config
from models.small_world import WORLD_CONFIG_NAME
from training.distill.data import load_or_make, weights_digest
from training.distill.losses import Ema, PatchDiscriminator, discriminator_loss, generator_loss, pixel_losses, psnr
from training.distill.picture import side_by_side
from training.trainer.checkpoint import capture_rng_state, restore_rng_state, torch_save_atomic
from training.trainer.schedule import build_scheduler

logger = logging.getLogger("training.distill_decoder")
STATE_FILE = "distill_state.pt"


def student_config(a) -> SmallDecoderConfig:
    """The student's architecture: ``--size`` preset, with ``--widths/--blocks/--patch`` replacing its fields."""
    base = PRESETS[a.size].to_dict()
    for name in ("widths", "blocks", "patch"):
        if getattr(a, name) is not None:
            base[name] = getattr(a, name)
    return SmallDecoderConfig(**base)


def build_teacher(a):
    """The teacher pipeline of ``--world``, ``--model_dir`` or ``--preset``, and the run's settings completed from
    it: ``a.height/width`` (the world's serve.json; 64x64 tiny; 480x832 the 5B model), ``a.speed`` (the world's
    recipe), ``a.source`` (what ``training.distill.data`` makes), ``a.teacher_name``, ``a.work``."""
    import torch
    dtype = getattr(torch, a.dtype)
    pipe = build_pipeline(preset=a.preset, world=a.world, model_dir=a.model_dir, device=a.device, torch_dtype=dtype,
                          controller=bool(a.generated))  # --generated flies the world's own flights
    serve = load_serve_config(a.world) if a.world else None
    size = (serve.height, serve.width) if serve else (64, 64) if a.preset else (480, 832)
    a.height, a.width = a.height or size[0], a.width or size[1]
    if a.speed is None:
        recipe = {}
        if a.world and os.path.isfile(os.path.join(a.world, WORLD_CONFIG_NAME)):
            with open(os.path.join(a.world, WORLD_CONFIG_NAME)) as handle:
                recipe = json.load(handle).get("recipe") or {}
        a.speed = float(recipe.get("speed", 1.0))  # the world's own flights: the motion its VAE learned
    a.teacher_name = a.world or a.model_dir or f"preset {a.preset}"
    common = {"clips": a.clips, "holdout": a.holdout, "frames": a.frames, "eval_frames": a.eval_frames,
              "height": a.height, "width": a.width, "tiled": a.tiled}
    a.source = {"kind": "data", "data": os.path.abspath(a.data), **common} if a.data else \
        {"kind": "synthetic", "seed": a.seed, "speed": a.speed, **common}
    if a.generated:
        a.source["generated"] = {"count": a.generated, "seed": a.seed, "speed": a.speed,
                                 "stream": stream_settings(serve, a.world)}
    a.work = a.work or os.path.join("outputs", "distill_decoder", re.sub(r"[^A-Za-z0-9_.-]+", "_", a.out.strip("/")))
    return pipe


def stream_settings(serve, world) -> dict:
    """``pipe.open_stream``'s settings for ``--generated`` flights: the world's serve.json ones (the tiny preset has
    none: the stream's defaults); ValueError for a chunked world, whose flights are not one stream."""
    if serve is None:
        return {}
    if serve.generation != "causal":
        raise ValueError(f"--generated: {world}'s serve.json says generation {serve.generation!r}; only a causal "
                         "world's flights are generated (one stream each)")
    return {"steps": serve.steps, "block_frames": serve.block_frames, "window": serve.window, "sink": serve.sink,
            "action_guidance": serve.action_guidance, "action_guidance_rescale": serve.action_guidance_rescale}


def to_video(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).float().div_(127.5).sub_(1)
    return x.permute(0, 4, 1, 2, 3)


class DistillRun:
    def __init__(self, a, teacher):
        self.a, self.teacher = a, teacher
        self.device = torch.device(a.device)
        torch.manual_seed(a.seed)
        self.student = SmallDecoder(student_config(a)).to(self.device).train()
        self.data = load_or_make(a.work, teacher, a.source, a.progress)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.scheduler = build_scheduler(self.optimizer, a.steps, warmup_ratio=0.05, base_lr=a.lr, min_lr=a.lr * 0.05)
        self.ema = Ema(self.student, a.ema)
        self.disc = self.disc_optimizer = None
        if a.gan_weight > 0:
            self.disc = PatchDiscriminator().to(self.device)
            self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=a.gan_lr, betas=(0.5, 0.99))
        self.step, self.losses, self.elapsed = 0, [], 0.0
        path = os.path.join(a.work, STATE_FILE)
        if os.path.isfile(path):
            self._resume(torch.load(path, map_location="cpu", weights_only=False))

    # ---- state ----
    def _resume(self, blob: dict) -> None:
        if blob["config"] != self.student.config.to_dict():
            raise ValueError(f"{self.a.work}/{STATE_FILE} is a run of another student ({blob['config']}); give "
                             f"another --work or the same --size/--widths/--blocks/--patch")
        self.student.load_state_dict(blob["student"])
        self.ema.load_state_dict(blob["ema"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        if self.disc is not None and "disc" in blob:
            self.disc.load_state_dict(blob["disc"])
            self.disc_optimizer.load_state_dict(blob["disc_optimizer"])
        restore_rng_state(blob["rng"])
        self.step, self.losses, self.elapsed = blob["step"], blob["losses"], blob["elapsed"]
        logger.info("resuming at step %d", self.step)

    def save_state(self) -> None:
        blob = {"config": self.student.config.to_dict(), "step": self.step, "student": self.student.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": capture_rng_state(), "losses": self.losses,
                "elapsed": self.elapsed}
        if self.disc is not None:
            blob.update(disc=self.disc.state_dict(), disc_optimizer=self.disc_optimizer.state_dict())
        torch_save_atomic(os.path.join(self.a.work, STATE_FILE), blob)

    # ---- training ----
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (B, C, F, h, w), the teacher's video (B, 3, T, H, W)) of a step: a pure function of it. With
        ``--crop c`` a random c x c window of the latent grid and the teacher's pixels under it (the decoder is
        convolutional: crops train it at a fraction of the cost of whole frames; time is never cropped)."""
        count = len(self.data.latents)
        rng = np.random.default_rng([self.a.seed, step])
        idx = np.sort(rng.choice(count, min(self.a.batch, count), False))
        z, frames = self.data.latents[idx], self.data.teacher[idx]  # (B, C, F, h, w), (B, T, H, W, 3)
        h, w = z.shape[-2:]
        crop = self.a.crop
        if crop and crop < max(h, w):
            y, x = int(rng.integers(0, max(1, h - crop + 1))), int(rng.integers(0, max(1, w - crop + 1)))
            s = self.student.config.spatial
            z = z[..., y:y + crop, x:x + crop]  # (B, C, F, c, c)
            frames = frames[:, :, y * s:(y + crop) * s, x * s:(x + crop) * s]  # (B, T, c*16, c*16, 3)
        return z.to(self.device), to_video(frames, self.device)

    def train_step(self, step: int) -> dict:
        a = self.a
        z, target = self.batch(step)
        pred, _ = self.student(z)  # (B, 3, T, H, W)
        losses = pixel_losses(pred, target, a.l1, a.mse, a.motion)
        total = losses["total"]
        if self.disc is not None and step >= a.gan_start:
            self.disc_optimizer.zero_grad(set_to_none=True)
            disc_loss = discriminator_loss(self.disc, target, pred)
            disc_loss.backward()
            self.disc_optimizer.step()
            losses["disc"] = disc_loss
            losses["gan"] = generator_loss(self.disc, pred)
            total = total + a.gan_weight * losses["gan"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.student, step)
        return {k: float(v.detach()) for k, v in losses.items()}

    def train(self) -> None:
        from tqdm import tqdm
        a = self.a
        bar = tqdm(total=a.steps, initial=self.step, desc="distill", unit="step", disable=not a.progress)
        began = time.perf_counter() - self.elapsed
        while self.step < a.steps:
            metrics = self.train_step(self.step)
            self.losses.append(metrics["total"])
            self.step += 1
            self.elapsed = time.perf_counter() - began
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['total']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if self.step % max(1, a.steps // 10) == 0:
                logger.info("step %d %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if self.step % a.save_steps == 0 or self.step == a.steps:
                self.save_state()
        bar.close()

    def ema_decoder(self) -> SmallDecoder:
        decoder = SmallDecoder(self.student.config).to(self.device)
        decoder.load_state_dict(self.ema.shadow)
        return decoder.eval().requires_grad_(False)

    # ---- measure and write ----
    @torch.no_grad()
    def measure(self, decoder: SmallDecoder) -> dict:
        """Held-out clips decoded continuously through the stream decoder, against the teacher and the truth."""
        data, scores = self.data, {"teacher": [], "truth": [], "teacher_truth": [], "first": [], "last": []}
        gap, decoded = 0.0, []
        for i, z in enumerate(data.held_latents):
            z = z[None].to(self.device)  # (1, C, F, h, w)
            stream = SmallStreamDecoder(decoder, self.device)
            parts = [stream.push(z[:, :, f:f + 1]) for f in range(z.shape[2])]  # latent frame by latent frame
            video = torch.cat(parts, 2)  # (1, 3, T, H, W)
            if i == 0:
                gap = float((video - decoder(z)[0].clamp(-1, 1)).abs().max())  # streamed vs one-shot
            frames = torch.from_numpy(video_to_frames(video))  # (T, H, W, 3)
            teacher, truth = torch.from_numpy(data.held_teacher[i]), torch.from_numpy(data.held_frames[i])
            quarter = max(1, len(frames) // 4)
            scores["teacher"].append(psnr(frames, teacher))
            scores["truth"].append(psnr(frames, truth))
            scores["teacher_truth"].append(psnr(teacher, truth))
            scores["first"].append(psnr(frames[:quarter], teacher[:quarter]))
            scores["last"].append(psnr(frames[-quarter:], teacher[-quarter:]))
            decoded.append(frames.numpy())
        self.decoded = decoded
        return {"psnr_to_teacher_db": float(np.mean(scores["teacher"])),
                "psnr_to_teacher_min_db": float(np.min(scores["teacher"])),
                "psnr_to_teacher_first_quarter_db": float(np.mean(scores["first"])),
                "psnr_to_teacher_last_quarter_db": float(np.mean(scores["last"])),
                "psnr_to_truth_db": float(np.mean(scores["truth"])),
                "teacher_psnr_to_truth_db": float(np.mean(scores["teacher_truth"])),
                "stream_vs_oneshot_max_abs": gap, "heldout_clips": len(data.held_latents),
                "heldout_frames_per_clip": int(data.held_teacher.shape[1])}

    def cost(self) -> dict:
        _, _, _, h, w = self.data.held_latents.shape
        small, teacher = small_decoder_cost(self.student.config, h, w), wan_decoder_cost(self.teacher.vae.model, h, w)
        return {"grid": [h, w], "small": small, "teacher": teacher,
                "flops_ratio": small["flops_per_latent_frame"] / teacher["flops_per_latent_frame"]}

    def run(self) -> dict:
        a = self.a
        if not a.export_only:
            self.train()
        decoder = self.ema_decoder()
        report = {"steps": self.step, "train_s": round(self.elapsed, 1),
                  "loss_first10": float(np.mean(self.losses[:10])) if self.losses else None,
                  "loss_last10pct": float(np.mean(self.losses[-max(1, len(self.losses) // 10):]))
                  if self.losses else None, **self.measure(decoder), "cost": self.cost()}
        teacher = {"source": a.teacher_name, "vae_sha256": weights_digest(self.teacher.vae.model)}
        recipe = {k: v for k, v in vars(a).items() if k not in ("progress", "source", "export_only")}
        save_small_decoder(a.out, decoder, extra={"teacher": teacher, "report": report, "recipe": recipe})
        side_by_side(os.path.join(a.out, "side_by_side.png"), self.data.held_frames[0], self.data.held_teacher[0],
                     self.decoded[0])
        return report
