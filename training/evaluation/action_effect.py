"""How strongly a world's actions steer its next frame, read from the DiT itself: seconds, no optical flow.

From held-out synthetic first images, the first latent frame after the image is noised at a few timesteps (around
the image's own latent: a hover) and the DiT predicts its velocity twice, once with an action and once with its
opposite (Yaw Left / Yaw Right, Forward / Back, at the suite's magnitudes). The effect is the norm of the
difference over the norm of the prediction. Two attention patterns over the same weights:

    bidirectional  the chunked pipeline (``models.model_fn``): frame 0's tokens also attend to frame 1
    causal         a stream's first block (``models.causal``): frame 0 sees only itself, frame 1 sees both (with
                   a ``lookahead`` controller, frame 0 is also told the action, as a stream's sink is)

A world that follows the keys in the flow suite has a clearly non-zero effect; a causal training run that lets the
effect fall is learning to ignore its actions (docs/toyworld.md). An early signal during training, not a score.

Axis legend: C latent channels, F latent frames (2: the image and the next), h/w latent grid, T action steps (1).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.action_format import ACTION_NAMES, constant_actions, split_actions
from models.causal import model_fn_causal
from models.model_fn import model_fn_wan_action
from models.options import CausalSettings
from training.evaluation.sources import rendered_first_frames
from training.evaluation.suite import suite_magnitudes

PAIRS = {"yaw": ("Yaw Left", "Yaw Right"), "move": ("Forward", "Back")}


@torch.no_grad()
def action_effect(pipe, height: int = 128, width: int = 128, scenes: int = 4,
                  timesteps: tuple[float, ...] = (900.0, 500.0), seed: int = 0) -> dict:
    """``{pattern: {pair: mean relative effect}}`` over ``scenes`` held-out images of height x width (the world's
    size) and ``timesteps``."""
    if scenes < 1 or not timesteps:
        raise ValueError(f"scenes must be >= 1 and timesteps non-empty, got {scenes}, {timesteps}")
    if pipe.action_controller is None:
        raise ValueError("action_effect needs a pipeline with an action controller")
    magnitudes = suite_magnitudes(getattr(pipe, "action_stats", None))
    context = _prompt_context(pipe)
    generator = torch.Generator().manual_seed(seed)
    effects = {pattern: {pair: [] for pair in PAIRS} for pattern in ("bidirectional", "causal")}
    for _, image, _ in rendered_first_frames(scenes, height, width, seed=seed):
        first = _encode(pipe, image)  # (1, C, 1, h, w)
        for t in timesteps:
            noise = torch.randn(first.shape, generator=generator).to(first)  # (1, C, 1, h, w)
            latents = torch.cat([first, (1 - t / 1000) * first + t / 1000 * noise], dim=2)  # (1, C, 2, h, w)
            for pair, names in PAIRS.items():
                for pattern in effects:
                    a, b = (_velocity(pipe, pattern, latents, t, context, name, magnitudes) for name in names)
                    effects[pattern][pair].append(float((a - b).norm() / (0.5 * (a.norm() + b.norm()))))
    return {pattern: {pair: float(np.mean(values)) for pair, values in by_pair.items()}
            for pattern, by_pair in effects.items()}


def _prompt_context(pipe) -> torch.Tensor:
    from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder
    return WanVideoUnit_PromptEmbedder().process(pipe, "a drone flies over the land", True)["context"]  # (1, S, D)


def _encode(pipe, image: np.ndarray) -> torch.Tensor:
    pixels = pipe.preprocess_image(Image.fromarray(image)).transpose(0, 1)  # (3, 1, H, W)
    return pipe.vae.encode([pixels], device=pipe.device).to(pipe.device, pipe.torch_dtype)  # (1, C, 1, h, w)


def _velocity(pipe, pattern: str, latents, t: float, context, name: str, magnitudes) -> torch.Tensor:
    """(1, C, h, w) the predicted velocity of frame 1 with one held action."""
    raw = constant_actions(1, {name: float(magnitudes[ACTION_NAMES.index(name)])})[None]  # (1, T, 2, 8)
    binary, magnitude = split_actions(raw, pipe.action_magnitude_scale)  # (1, T, 8) each
    if pattern == "bidirectional":
        out = model_fn_wan_action(pipe.dit, pipe.action_controller, latents, torch.tensor([t]), context, binary,
                                  magnitude, fuse_vae_embedding_in_latents=True)
    else:  # the sink knows the action that drives frame 1 (a lookahead controller's; ignored by others)
        none = torch.zeros_like(binary)  # (1, 1, 8): frame 1 has no next action
        ahead = (torch.cat([binary, none], 1), torch.cat([magnitude, none], 1), torch.tensor([[True, False]]))
        out = model_fn_causal(pipe.dit, pipe.action_controller, latents, torch.tensor([[0.0, t]]), context,
                              CausalSettings(block_frames=1, window=1), binary, magnitude, ahead=ahead)
    return out[:, :, 1].float()  # (1, C, h, w)
