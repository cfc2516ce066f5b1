"""``WorldStream``: one flight as one continuous block-causal stream (``pipe.open_stream(...)``).

Axis legend: B branches (2 with action guidance: commanded, hover; else 1), C latent channels (48), b frames per
block, h/w latent grid, H/W pixels, n video frames, S text tokens, D hidden size.

Opening encodes the first image once (latent frame 0), runs it through the DiT at timestep 0 to fill the cache's
sink, and decodes it (the flight's frame 0). Each ``step(actions)`` then makes one block: noise -> ``steps``
denoising steps of the block's tokens against the cached context (``models.causal.forward_block``) -> its frames
through the decoder that never restarts (``models.streaming.StreamDecoder``, or the small decoder of
``models.frames``: ``pipe.use_decoder``) -> one clean pass at timestep 0 that
writes the block's keys and values into the cache (the window rolls). With ``overlap`` the decode runs on a lane
(``models.frames.lane``: a second CUDA stream or the decode device) beside the cache write and the caller's next
block (``step_async``). Nothing is ever re-encoded: the model sees
its own latents, not decoded frames. Memory per stream is constant: the cache is a fixed ring, the decoder keeps
the last frames of each causal conv, and with ``keep_latents=False`` no history is kept at all.

A ``joint_previous`` controller's blocks are denoised with a clean copy of the frame before them
(``models.causal``): one more frame of tokens in each denoising step, none in the clean pass.
With a ``lookahead`` controller a clean pass also tells the frames their next action (``models.causal``), so it
waits for the next ``step``'s actions: the sink's pass runs at the first step, a block's at the step after it (one
more forward before that block's first frame; the decode no longer overlaps the cache write).
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Iterator, Optional

import numpy as np
import torch
from diffsynth.diffusion.flow_match import FlowMatchScheduler
from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder
from PIL import Image

from .action_format import NUM_ACTIONS, parse_actions, split_actions
from .causal import ahead_action_emb, block_action_emb, forward_block
from .frames.lane import DecodeLane
from .kv_cache import KVCache
from .media import video_to_frames
from .model_fn import guide, tokens_per_frame
from .options import CausalSettings, check_action_guidance, check_action_guidance_rescale


class WorldStream:
    """See the module docstring; made by ``WanActionPipeline.open_stream``."""

    @torch.no_grad()
    def __init__(self, pipe, image, prompt: str, *, seed: int = 0, steps: int = 4, settings: CausalSettings,
                 height: int, width: int, action_guidance: float = 1.0, action_guidance_rescale: float = 0.0,
                 sigma_shift: float = 5.0, tiled: bool = False, keep_latents: bool = True, overlap: bool = False):
        if pipe.action_controller is None:
            raise ValueError("open_stream needs an action controller (pipe.set_action_controller or "
                             "pipe.load_action_artifacts)")
        pipe.check_shape(height, width, 4 * settings.block_frames + 1)
        for name, value in (("steps", steps), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "steps" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'steps' else 0}, got {value!r}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        self.pipe, self.settings, self.seed, self.steps = pipe, settings, seed, steps
        self.guidance = check_action_guidance(action_guidance)
        self.rescale = check_action_guidance_rescale(action_guidance_rescale)
        self.branches = 2 if self.guidance != 1.0 else 1
        self.dit, self.controller = pipe.dit, pipe.action_controller
        self.scheduler = FlowMatchScheduler("Wan")  # our own: other calls on the pipe reset its scheduler
        self.scheduler.set_timesteps(steps, shift=sigma_shift)
        window_type = self.controller.injection_type == "cross_attn_window"
        self.history_steps = self.controller.config.action_window - 1 if window_type else 0
        self.history = torch.zeros(1, 0, 2, NUM_ACTIONS)  # (1, T, 2, 8) raw actions the window type still sees
        self.blocks, self.closed, self._pending = 0, False, None
        self.context = self._embed_prompt(prompt)  # (B, S, D)
        first = self._encode_image(image, height, width, tiled)  # (1, C, 1, h, w)
        self.grid = first.shape[3:]
        self.cache = KVCache(settings.window, settings.sink, len(self.dit.blocks), self.branches,
                             tokens_per_frame(self.dit, *self.grid), self.dit.dim, pipe.device, pipe.torch_dtype)
        pipe.load_models_to_device(["dit", "action_controller"])
        self.lookahead = bool(self.controller.config.lookahead)
        self.joint = bool(self.controller.config.joint_previous)
        if self.joint and settings.window < 1:
            raise ValueError("window: this world denoises each block with the frame before it (joint_previous), "
                             "which must stay in context: window must be >= 1")
        self._previous = first  # (1, C, 1, h, w) the frame before the next block (joint_previous)
        self._pending = (first, None, None)  # the sink: the first image, clean (a lookahead one waits for step 1)
        if not self.lookahead:
            self._commit()
        self.decoder = pipe.new_stream_decoder(tiled)  # the Wan decoder or the small one (models.frames)
        self._first_frames = video_to_frames(self.decoder.push(first))  # (1, H, W, 3): frame 0 of the flight
        self._latents = [first] if keep_latents else None
        self.lane = DecodeLane(self.decoder.device) if overlap else None  # decodes beside the next denoising

    # ---- set-up ------------------------------------------------------------------------------------------------
    def _embed_prompt(self, prompt: str) -> torch.Tensor:
        """The prompt through the pipeline's (cached) prompt unit and the DiT's text embedding, once per stream."""
        pipe = self.pipe
        unit = next(u for u in pipe.units if isinstance(u, WanVideoUnit_PromptEmbedder))
        pipe.load_models_to_device(unit.onload_model_names)
        context = unit.process(pipe, prompt, True)["context"].to(pipe.device, pipe.torch_dtype)  # (1, S, D_text)
        return self.dit.text_embedding(context).expand(self.branches, -1, -1)  # (B, S, D)

    def _encode_image(self, image, height: int, width: int, tiled: bool) -> torch.Tensor:
        pipe = self.pipe
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")
        pipe.load_models_to_device(["vae"])
        pixels = pipe.preprocess_image(image.convert("RGB").resize((width, height))).transpose(0, 1)  # (3,1,H,W)
        return pipe.vae.encode([pixels], device=pipe.device, tiled=tiled).to(pipe.device, pipe.torch_dtype)

    # ---- the flight --------------------------------------------------------------------------------------------
    @property
    def latents(self) -> torch.Tensor:
        """(1, C, F, h, w): every latent frame so far, frame 0 the first image (needs ``keep_latents``)."""
        if self._latents is None:
            raise ValueError("latents: this stream was opened with keep_latents=False")
        return torch.cat(self._latents, dim=2)

    def step(self, actions) -> np.ndarray:
        """The next block from raw ``actions`` (block_frames, 2, 8): its frames (n, H, W, 3) uint8, 4 per latent
        frame (the first step also returns the flight's frame 0, the first image as decoded)."""
        return np.concatenate(list(self.step_iter(actions)))

    def step_iter(self, actions) -> Iterator[np.ndarray]:
        """``step`` as it decodes: one (n, H, W, 3) uint8 group per latent frame, as soon as it is ready. The
        cache is written after the last group (or at the next step, if the caller stopped early). A stream with
        ``overlap`` writes it first and decodes on its lane (``step_async``)."""
        if self.lane is not None:
            yield from self.step_async(actions).result()
            return
        x, first = self._block(actions)  # (1, C, b, h, w)
        with torch.no_grad():
            if first:
                yield self._first_frames
            for i in range(x.shape[2]):
                yield video_to_frames(self.decoder.push(x[:, :, i:i + 1]))  # (4, H, W, 3)
        self._commit()

    def step_async(self, actions) -> Future:
        """The next block with its decode on the lane (a stream opened with ``overlap=True``): denoised now, its
        decode submitted, its keys and values written while it decodes, then a Future of its frame groups
        (``step_iter``'s), so the caller can make the next block while this one decodes (on a second CUDA stream or
        ``decode_device``)."""
        if self.lane is None:
            raise ValueError("step_async: the stream was opened without overlap=True")
        x, first = self._block(actions)  # (1, C, b, h, w)
        groups = self.lane.submit(lambda latents: self._decode_groups(latents, first), x)
        self._commit()  # beside the decode: the first frames do not wait for the cache write (only reads x)
        return groups

    def _decode_groups(self, x: torch.Tensor, first: bool) -> list[np.ndarray]:
        groups = [self._first_frames] if first else []
        return groups + [video_to_frames(self.decoder.push(x[:, :, i:i + 1])) for i in range(x.shape[2])]

    def _block(self, actions) -> tuple[torch.Tensor, bool]:
        """Denoise the next block: its latents (1, C, b, h, w), and whether it is the flight's first."""
        raw = self._check(actions)  # (1, b, 2, 8)
        self._commit(raw)
        steps = torch.cat([self.history, raw], dim=1)  # (1, T, 2, 8): the window type also sees past steps
        self.history = steps[:, max(0, steps.shape[1] - self.history_steps):] if self.history_steps else self.history
        with torch.no_grad():
            action_emb = self._action_emb(*split_actions(steps, self.pipe.action_magnitude_scale))  # (B, T, D)
            x = self._denoise(action_emb)  # (1, C, b, h, w)
        self._pending, self._previous = (x, action_emb, raw), x[:, :, -1:]
        if self._latents is not None:
            self._latents.append(x)
        first = self.blocks == 0
        self.blocks += 1
        return x, first

    def close(self) -> None:
        """Free the cache and the decoder (after the lane's last decode); a closed stream refuses ``step``."""
        self.closed, self._pending, self._previous = True, None, None
        if self.lane is not None:
            self.lane.close()
        self.cache = self.decoder = self._latents = self.lane = None

    # ---- internals ---------------------------------------------------------------------------------------------
    def _check(self, actions) -> torch.Tensor:
        if self.closed:
            raise ValueError("stream: it is closed")
        raw = parse_actions(actions, "actions")  # (1, T, 2, 8); NaN, bad flags, negatives refused here
        expected = (1, self.settings.block_frames, 2, NUM_ACTIONS)
        if tuple(raw.shape) != expected:
            raise ValueError(f"actions: expected shape {expected[1:]} (block_frames steps of [binary, magnitude] x "
                             f"{NUM_ACTIONS}), got {tuple(raw.shape[1:]) if raw.shape[0] == 1 else tuple(raw.shape)}")
        return raw

    def _branches(self, binary, magnitude):
        """(1, T, 8) x 2 -> (B, T, 8) x 2 on the device: the commanded actions, and hovering (all off) for the
        guidance branch."""
        device, dtype = self.pipe.device, next(self.controller.parameters()).dtype
        binary, magnitude = binary.to(device, dtype), magnitude.to(device, dtype)  # (1, T, 8)
        if self.branches == 2:
            binary = torch.cat([binary, torch.zeros_like(binary)])  # (2, T, 8)
            magnitude = torch.cat([magnitude, torch.zeros_like(magnitude)])
        return binary, magnitude

    def _action_emb(self, binary, magnitude) -> torch.Tensor:
        """(B, T, D) action tokens of the branches."""
        binary, magnitude = self._branches(binary, magnitude)  # (B, T, 8) each
        past = binary.shape[1] - self.settings.block_frames  # history steps before this block's
        emb = block_action_emb(self.controller, binary, magnitude, self.settings.block_frames, -past)  # (B, T, D)
        return emb.to(self.pipe.torch_dtype)

    def _ahead_emb(self, raw: Optional[torch.Tensor], next_raw: torch.Tensor) -> torch.Tensor:
        """(B, f, D) each pending frame's next action: the rest of its own block's ``raw`` (1, b, 2, 8) (none for
        the sink), then the next block's first."""
        steps = next_raw[:, :1] if raw is None else torch.cat([raw[:, 1:], next_raw[:, :1]], dim=1)  # (1, f, 2, 8)
        binary, magnitude = self._branches(*split_actions(steps, self.pipe.action_magnitude_scale))  # (B, f, 8)
        return ahead_action_emb(self.controller, binary, magnitude).to(self.pipe.torch_dtype)  # (B, f, D)

    def _denoise(self, action_emb) -> torch.Tensor:
        pipe, (h, w), b = self.pipe, self.grid, self.settings.block_frames
        x = pipe.generate_noise((1, self.dit.in_dim, b, h, w), seed=self.seed * 1_000_003 + self.blocks,
                                rand_device="cpu")  # (1, C, b, h, w)
        previous = self._previous.expand(self.branches, -1, -1, -1, -1) if self.joint else None  # (B, C, 1, h, w)
        for timestep in self.scheduler.timesteps:
            velocity = forward_block(self.dit, self.controller, x.expand(self.branches, -1, -1, -1, -1),
                                     float(timestep), self.context, self.cache, action_emb,
                                     previous=previous)  # (B, C, b, h, w)
            x = self.scheduler.step(self._guide(velocity), timestep, x)  # (1, C, b, h, w)
        return x

    def _guide(self, velocity: torch.Tensor) -> torch.Tensor:
        """``hover + g * (commanded - hover)`` with the optional rescale (as ``models.model_fn``)."""
        if self.branches == 1:
            return velocity
        commanded, hover = velocity.chunk(2)  # (1, C, b, h, w) each
        return guide(commanded, hover, self.guidance, self.rescale)

    def _commit(self, next_raw: Optional[torch.Tensor] = None) -> None:
        """The clean pass of the last block (or of the sink): its keys and values join the cache (the window rolls).
        A lookahead stream waits for ``next_raw`` (1, b, 2, 8), the next block's actions."""
        if self._pending is None or (self.lookahead and next_raw is None):
            return
        x, action_emb, raw = self._pending
        self._pending = None
        with torch.no_grad():
            ahead = self._ahead_emb(raw, next_raw) if self.lookahead else None  # (B, f, D)
            forward_block(self.dit, self.controller, x.expand(self.branches, -1, -1, -1, -1), 0.0, self.context,
                          self.cache, action_emb, write=True, first_frame_is_image=raw is None, ahead_emb=ahead)


def describe(stream: Optional[WorldStream]) -> dict:
    """What a stream holds, for logs and benches: cache bytes and frames, blocks made."""
    if stream is None or stream.closed:
        return {}
    return {"blocks": stream.blocks, "cache_bytes": stream.cache.nbytes, "cache_frames": stream.cache.frames}
