"""Block-causal training (``models.causal``): diffusion forcing with teacher forcing, noised context and an error
buffer. One objective for the trainer (``--causal``) and the small-world recipe.

Axis legend: B clips, C latent channels (48), F latent frames (frame 0 = the first image), h/w latent grid,
T = F - 1 action steps, A actions (8).

A training clip is the sink (frame 0) plus a window of ``window + block_frames`` consecutive frames taken anywhere
in the video (``sample_window``): once a stream's window is full, that is exactly what a block sees, so a long video
also teaches the model a first image far in the past. Two biases of where the window sits:

    first_window   share of windows that start right after the sink: the stream's first blocks are then trained
                   too, not only blocks deep into a flight. Such a window ends at a random one of the stream's
                   first blocks (its context: the first image only, then one more block each), so every block
                   of a stream's start is trained as the last block, exactly as a stream makes it (with only
                   full windows, the first block never was, and the toy worlds' first blocks lost their action
                   effect, docs/toyworld.md). A window further
                   in leaves its first frame with no predecessor to see (only the far sink): one step's action,
                   a motion relative to the frame before, cannot be read there, so that frame is kept out of the
                   loss (trained on, it teaches the model to ignore the actions: the second causal toy world
                   lost most of its action effect that way, docs/toyworld.md)
    action_change  share of windows whose last block starts where the commanded action changes: with actions held
                   for several steps, the clean context alone predicts the next frame's motion, and the model
                   learns to continue the motion instead of following the keys (the first causal toy world did)

Where in a frame the loss looks (``motion_weight``): each latent position's loss is weighted up by how much the
true clip changed there from the frame before (``motion_weights``). Most of a frame is predictable from the frame
before; the part an action decides (what moved, and by how much) is a small share of a plain MSE, and the toy
worlds moved 3-6% of the true translation. Measured on two toy worlds (its VAE's latents and the thumbnail code):
no gain in following (docs/toyworld.md), so the default stays 0.

Per clip, one of two modes:

    diffusion forcing (1 - teacher_forcing)  every block at its own noise level; the loss on every block
    teacher forcing (teacher_forcing)        the last block noised, the earlier ones are context: clean frames plus
                                             the defences below; the loss on the last block only

Defences against the model's own errors (a stream conditions on what it generated, never on ground truth):
    noised context  context frames at a small known noise level (timestep up to ``context_noise`` x 1000), so the
                    model does not trust them pixel for pixel
    error buffer    prediction residuals (predicted clean latent - true clean latent) of recent training steps are
                    stored and, with probability ``error_prob`` per context frame, added to clean context frames
                    (as Stable Video Infinity / Matrix-Game 3.0): the context then carries the model's own kind of
                    error, without a rollout
    own context     with probability ``rollout`` per batch, the context blocks of teacher-forced clips are the
                    model's own generation from the true frames before them (``training.trainer.own_context``:
                    a rollout with the stream's sampler, ``rollout_steps``/``rollout_guidance``/``rollout_rescale``),
                    so the last block learns to carry on from the model's real errors (the toy world with rollout
                    0.5: steps 2.9x dearer; docs/toyworld.md "Trained on its own rollouts")
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from models.causal import block_of_frames, model_fn_causal
from models.options import CausalSettings
from training.trainer.own_context import Sampler, generated_blocks, own_context


@dataclass
class ForcingConfig:
    teacher_forcing: float = 0.5  # share of clips trained as "context + one noised block"
    context_noise: float = 0.1  # max noise level (sigma) of context frames in teacher forcing; 0 = clean context
    error_prob: float = 0.5  # chance a context frame gets a stored prediction residual; 0 = no error buffer
    error_buffer: int = 256  # residuals kept (frames)
    first_window: float = 0.25  # share of windows starting right after the sink (the stream's first blocks)
    action_change: float = 0.5  # share of windows whose last block starts at a change of the commanded action
    motion_weight: float = 0.0  # extra loss weight where the true clip changes from frame to frame; 0 = plain MSE
    rollout: float = 0.0  # share of batches whose teacher-forced context is the model's own generation; 0 = never
    rollout_steps: int = 4  # the rollout's sampler: as the world serves (its serve.json steps, guidance, rescale)
    rollout_guidance: float = 1.0
    rollout_rescale: float = 0.0

    def __post_init__(self):
        for name in ("teacher_forcing", "context_noise", "error_prob", "first_window", "action_change", "rollout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if isinstance(self.error_buffer, bool) or not isinstance(self.error_buffer, int) or self.error_buffer < 1:
            raise ValueError(f"error_buffer must be a positive integer, got {self.error_buffer!r}")
        weight = self.motion_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ValueError(f"motion_weight must be a finite number >= 0, got {weight!r}")
        self.sampler()  # the rollout's steps, guidance and rescale, checked by name

    def sampler(self) -> Sampler:
        return Sampler(steps=self.rollout_steps, guidance=self.rollout_guidance, rescale=self.rollout_rescale)


class ErrorBuffer:
    """The last ``size`` per-frame prediction residuals (C, h, w), on the CPU in float32."""

    def __init__(self, size: int):
        self.size, self.items, self.next = size, [], 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, residuals: torch.Tensor) -> None:
        """(n, C, h, w) residuals of n frames."""
        for residual in residuals.detach().to("cpu", torch.float32):
            if len(self.items) < self.size:
                self.items.append(residual)
            else:
                self.items[self.next] = residual
            self.next = (self.next + 1) % self.size

    def sample(self, rng: random.Random) -> torch.Tensor:
        return self.items[rng.randrange(len(self.items))]


class Window(NamedTuple):
    """A training clip cut by ``sample_window``; axes as the module legend, F the kept frames."""
    latents: torch.Tensor  # (B, C, F, h, w)
    binary: torch.Tensor  # (B, F-1, A) the actions that drive frames 1..F-1
    magnitude: torch.Tensor  # (B, F-1, A)
    adjacent: bool  # the window's first frame directly follows the sink in the video
    ahead_binary: torch.Tensor  # (B, F, A) the action that drives the frame after each kept frame (zeros: none)
    ahead_magnitude: torch.Tensor  # (B, F, A)


def sample_window(latents: torch.Tensor, binary: torch.Tensor, magnitude: torch.Tensor, settings: CausalSettings,
                  rng: random.Random, first_window: float = 0.0, action_change: float = 0.0) -> Window:
    """Frame 0 plus ``window + block_frames`` consecutive later frames (all of them when the clip is shorter), with
    the actions that drive those frames. latents (B, C, F, h, w), actions (B, F-1, A) -> a ``Window``: the same,
    cropped, whether the window's first frame directly follows the sink in the video (``causal_loss``'s
    ``adjacent``) and each kept frame's next action (a ``lookahead`` controller's, ``causal_loss``'s ``ahead``).
    ``first_window``/``action_change``: the shares of windows placed right after the sink / with the last block
    starting at a change of the commanded action (module docstring); the clips of a batch share one window."""
    frames = latents.shape[2]
    span = settings.window + settings.block_frames
    if frames <= 1 + span:
        return Window(latents, binary, magnitude, True, *_next_actions(binary, magnitude, torch.arange(frames)))
    starts = range(1, frames - span + 1)  # the window's possible first frames
    if rng.random() < first_window:
        return first_blocks(latents, binary, magnitude, settings, rng)
    changes = [s for s in starts if _action_changes(binary, magnitude, s + settings.window - 1)]
    start = rng.choice(changes if changes and rng.random() < action_change else starts)
    keep = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(start, start + span)])  # (1 + span,)
    steps = keep[1:] - 1  # action t drives frame t + 1
    return Window(latents[:, :, keep], binary[:, steps], magnitude[:, steps], start == 1,
                  *_next_actions(binary, magnitude, keep))


def first_blocks(latents: torch.Tensor, binary: torch.Tensor, magnitude: torch.Tensor, settings: CausalSettings,
                 rng: random.Random) -> Window:
    """The start of the video up to one of a stream's first blocks, picked at random (its context: the sink, then
    one more block each, up to a full window), as a ``Window``; the clips of a batch share it."""
    span = settings.window + settings.block_frames
    kept = 1 + settings.block_frames * rng.randint(1, span // settings.block_frames)  # sink + whole blocks
    kept = min(kept, latents.shape[2])
    return Window(latents[:, :, :kept], binary[:, :kept - 1], magnitude[:, :kept - 1], True,
                  *_next_actions(binary, magnitude, torch.arange(kept)))


def _next_actions(binary: torch.Tensor, magnitude: torch.Tensor, frames: torch.Tensor):
    """(B, f, A) x 2: the action driving the frame after each of ``frames`` (f,) (action t drives frame t + 1);
    zeros for the video's last frame, which has none."""
    steps = binary.shape[1]
    has_next = (frames < steps).to(binary.dtype)[None, :, None]  # (1, f, 1)
    index = frames.clamp(max=steps - 1)  # (f,)
    return binary[:, index] * has_next, magnitude[:, index] * has_next


def _action_changes(binary: torch.Tensor, magnitude: torch.Tensor, step: int) -> bool:
    """Whether the action of ``step`` (B, T, A) differs from the one before it in any clip of the batch."""
    if step < 1:
        return True
    return bool((binary[:, step] != binary[:, step - 1]).any() or (magnitude[:, step] != magnitude[:, step - 1]).any())


def causal_loss(dit, controller, scheduler, latents: torch.Tensor, context: torch.Tensor, binary: torch.Tensor,
                magnitude: torch.Tensor, settings: CausalSettings, forcing: ForcingConfig,
                errors: Optional[ErrorBuffer] = None, rng: Optional[random.Random] = None,
                use_gradient_checkpointing: bool = False, adjacent: Optional[torch.Tensor] = None,
                ahead_binary: Optional[torch.Tensor] = None, ahead_magnitude: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
    """The flow-matching loss of a block-causal clip. ``latents`` (B, C, F, h, w) clean, frame 0 the first image;
    ``context`` (B, S, D_text); ``binary``/``magnitude`` (B, F-1, A) scaled; ``scheduler`` in training mode
    (diffsynth's Wan FlowMatchScheduler: sigma = timestep / 1000). Randomness: torch's RNG for noise and
    timesteps, ``rng`` for the mode and the error buffer. ``adjacent`` (B,) bool: whether frame 1 directly
    follows frame 0 in the video (``sample_window``; default: all do); where not, frame 1 stays out of the loss
    (module docstring). ``ahead_binary``/``ahead_magnitude`` (B, F, A) scaled: each frame's next action, given to
    the frames before the last block (the stream's context) when the controller has ``lookahead``."""
    rng = rng or random.Random(int(torch.randint(0, 2 ** 31, (1,))))
    B, _, frames, _, _ = latents.shape
    block = block_of_frames(frames, settings.block_frames).to(latents.device)  # (F,)
    blocks = int(block.max())
    teacher = torch.tensor([rng.random() < forcing.teacher_forcing for _ in range(B)], device=latents.device)  # (B,)
    ids = torch.randint(0, len(scheduler.timesteps), (B, blocks))  # (B, blocks) per block
    block_t = scheduler.timesteps[ids].to(latents.device, torch.float32)  # (B, blocks)
    context_t = torch.rand(B, blocks, device=latents.device) * forcing.context_noise * 1000  # (B, blocks)
    last = torch.arange(1, blocks + 1, device=latents.device) == blocks  # (blocks,)
    block_t = torch.where(teacher[:, None] & ~last[None], context_t, block_t)  # (B, blocks)
    timesteps = torch.cat([torch.zeros(B, 1, device=latents.device), block_t[:, block[1:] - 1]], 1)  # (B, F)
    in_loss = torch.where(teacher[:, None], (block == blocks)[None], (block > 0)[None])  # (B, F)
    if adjacent is not None:  # a first frame far from the sink, with no predecessor in view: not a stream's task
        in_loss[:, 1] &= adjacent.to(latents.device) | teacher

    clean = latents.clone()
    own = torch.zeros(frames, dtype=torch.bool, device=latents.device)  # (F,) context frames the model generated
    whole = adjacent is None or bool(adjacent.all())
    if forcing.rollout > 0 and teacher.any() and rng.random() < forcing.rollout:
        for b in generated_blocks(frames, settings.block_frames, whole):
            own |= block == b
        generated = own_context(dit, controller, latents, context, binary, magnitude, settings, forcing.sampler(),
                                whole, ahead_binary, ahead_magnitude)  # (B, C, F, h, w)
        clean = torch.where(teacher[:, None, None, None, None], generated, clean)
    if errors is not None and len(errors) and forcing.error_prob > 0:
        for b in range(B):  # context frames of teacher-forced clips carry a recent residual of the model
            for f in range(1, frames):
                if teacher[b] and not in_loss[b, f] and not own[f] and rng.random() < forcing.error_prob:
                    clean[b, :, f] += errors.sample(rng).to(clean.device, clean.dtype)
    sigma = (timesteps / 1000).to(latents.dtype)[:, None, :, None, None]  # (B, 1, F, 1, 1)
    noise = torch.randn_like(latents)
    noisy = (1 - sigma) * clean + sigma * noise  # (B, C, F, h, w); frame 0 stays clean (sigma 0)
    ahead = None
    if ahead_binary is not None:  # every frame before the last block is context for it and knows its next action
        ahead = (ahead_binary, ahead_magnitude, (block < blocks)[None].expand(B, -1))  # present (B, F)
    prediction = model_fn_causal(dit, controller, noisy, timesteps, context, settings, binary, magnitude,
                                 use_gradient_checkpointing, ahead)  # (B, C, F, h, w)
    target = noise - latents  # the velocity towards the true clip
    weights = _weights(scheduler, timesteps)  # (B, F)
    squared = (prediction.float() - target.float()).pow(2).mean(dim=1)  # (B, F, h, w)
    if forcing.motion_weight > 0:
        squared = squared * motion_weights(latents, in_loss, forcing.motion_weight)  # (B, F, h, w)
    per_frame = squared.mean(dim=(2, 3))  # (B, F)
    mask = in_loss.float() * weights
    loss = (per_frame * mask).sum() / in_loss.float().sum().clamp_min(1)
    if errors is not None:
        with torch.no_grad():
            predicted_clean = noisy - sigma * prediction  # (B, C, F, h, w)
            frames_in_loss = in_loss.nonzero()  # (n, 2): (clip, frame)
            errors.add((predicted_clean - latents)[frames_in_loss[:, 0], :, frames_in_loss[:, 1]])  # (n, C, h, w)
    return loss


def motion_weights(latents: torch.Tensor, in_loss: torch.Tensor, motion_weight: float) -> torch.Tensor:
    """(B, F, h, w) loss weights of each latent position: ``(1 + motion_weight x m / mean(m)) / (1 + motion_weight)``,
    m (B, F, h, w) the mean |change| over channels from the frame before in ``latents`` (B, C, F, h, w) (frame 0:
    none), mean(m) over the positions of the frames ``in_loss`` (B, F); so the loss keeps its scale."""
    change = latents.diff(dim=2).abs().float().mean(dim=1)  # (B, F-1, h, w)
    change = torch.cat([torch.zeros_like(change[:, :1]), change], 1)  # (B, F, h, w)
    mean = change[in_loss].mean() if in_loss.any() else change.mean()
    return (1 + motion_weight * change / mean.clamp_min(1e-8)) / (1 + motion_weight)


def _weights(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """(B, F) the scheduler's training weight of each frame's timestep (Wan: larger in the middle of the schedule)."""
    table = scheduler.timesteps.to(timesteps.device)  # (1000,)
    index = (table[None, None, :] - timesteps[..., None]).abs().argmin(-1)  # (B, F)
    return scheduler.linear_timesteps_weights.to(timesteps.device)[index]
