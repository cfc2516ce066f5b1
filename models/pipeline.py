"""WanActionPipeline: diffsynth's WanVideoPipeline plus an action controller, extended from outside the package.

How it hooks in (see docs/architecture.md): ``action_controller`` joins ``in_iteration_models`` so it reaches
``model_fn`` in inference and in diffsynth's training loss; ``model_fn`` becomes ``model_fn_wan_action``; and
``__call__`` accepts ``actions=`` (raw ``(T,2,8)``) or the seed's ``action_binary=/action_magnitude=`` (scaled),
binding them into ``model_fn`` for that call only, so both CFG branches (``cfg_merge`` on or off) see them.
"""
from __future__ import annotations

import functools
import glob
import os
from collections import OrderedDict
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from diffsynth.core import ModelConfig
from diffsynth.pipelines.wan_video import WanVideoPipeline, WanVideoUnit_PromptEmbedder

from .action_format import MAGNITUDE_SCALE, check_scale, check_split_actions, num_actions_for_frames, split_actions
from .artifacts import apply_artifacts
from .frames.decoders import attach_small_decoder, decoding_with, new_stream_decoder, set_decode_device, use_decoder
from .model_dir import MODEL_DIR_LAYOUT, check_model_dir
from .model_fn import model_fn_wan_action
from .options import CausalSettings, check_action_guidance, check_action_guidance_rescale
from .stream import WorldStream
from .streaming import capture_latents, stream_groups


class CachedPromptEmbedder(WanVideoUnit_PromptEmbedder):
    """The stock prompt unit with a small LRU cache, so a flight session encodes its prompt once, not per chunk."""

    def process(self, pipe, prompt, positive) -> dict:
        size = getattr(pipe, "prompt_cache_size", 0)
        key = (prompt, id(pipe.text_encoder), str(pipe.device), pipe.torch_dtype)
        cache: OrderedDict = pipe.prompt_cache
        if size and key in cache and not torch.is_grad_enabled():
            cache.move_to_end(key)
            return {"context": cache[key]}
        result = super().process(pipe, prompt, positive)
        if size and not torch.is_grad_enabled():
            cache[key] = result["context"]
            while len(cache) > size:
                cache.popitem(last=False)
        return result


class WanActionPipeline(WanVideoPipeline):
    """WanVideoPipeline with ``action_controller``; see the module docstring."""

    def __init__(self, device="cpu", torch_dtype=torch.bfloat16):
        super().__init__(device=device, torch_dtype=torch_dtype)
        self._init_action_fields()

    def _init_action_fields(self):
        self.action_controller = None
        self.action_magnitude_scale = tuple(MAGNITUDE_SCALE)
        self.in_iteration_models = tuple(self.in_iteration_models) + ("action_controller",)
        self.in_iteration_models_2 = tuple(self.in_iteration_models_2) + ("action_controller",)
        self.model_fn = model_fn_wan_action
        self.units = [CachedPromptEmbedder() if isinstance(u, WanVideoUnit_PromptEmbedder) else u for u in self.units]
        self.prompt_cache_size = 8
        self.prompt_cache = OrderedDict()
        self.lora_config = None
        self.action_stats = None  # from the artifacts: the server derives key magnitudes from it
        self.decoder = "wan"  # which decoder makes the frames (models.frames.decoders): "wan" | "small"
        self.small_decoder = None  # a models.frames.small_decoder.SmallDecoder, when the world has one
        self.decode_device = self.decode_vae = None  # decoding on another device (set_decode_device)

    @classmethod
    def from_base(cls, pipe: WanVideoPipeline) -> "WanActionPipeline":
        """Turn a stock pipeline (as ``from_pretrained`` returns) into a WanActionPipeline, sharing its models."""
        if isinstance(pipe, cls):
            return pipe
        pipe.__class__ = cls  # adds behaviour only; every stock attribute stays valid
        pipe._init_action_fields()
        return pipe

    @classmethod
    def from_model_dir(cls, model_dir: str, device="cuda", torch_dtype=torch.bfloat16,
                       tokenizer_path: Optional[str] = None, **kwargs) -> "WanActionPipeline":
        """Load an original Wan2.2-TI2V-5B folder with no network access."""
        check_model_dir(model_dir)
        shards = sorted(glob.glob(os.path.join(model_dir, MODEL_DIR_LAYOUT["dit"])))
        configs = [
            ModelConfig(path=shards if len(shards) > 1 else shards[0]),
            ModelConfig(path=os.path.join(model_dir, MODEL_DIR_LAYOUT["text_encoder"])),
            ModelConfig(path=os.path.join(model_dir, MODEL_DIR_LAYOUT["vae"])),
        ]
        tokenizer_dir = tokenizer_path or os.path.join(model_dir, MODEL_DIR_LAYOUT["tokenizer"])
        if not os.path.isdir(tokenizer_dir):
            raise FileNotFoundError(f"tokenizer_path {tokenizer_dir!r} is not a folder")
        pipe = WanVideoPipeline.from_pretrained(
            torch_dtype=torch_dtype, device=device, model_configs=configs,
            tokenizer_config=ModelConfig(path=tokenizer_dir), redirect_common_files=False, **kwargs)
        return cls.from_base(pipe)

    # ---- controller and artifacts ----------------------------------------------------------------------------
    def set_action_controller(self, controller, magnitude_scale: Sequence[float] = None) -> "WanActionPipeline":
        if controller is not None:
            dit_dim = getattr(self.dit, "dim", None)
            if dit_dim is not None and controller.hidden_size != dit_dim:
                raise ValueError(f"action controller hidden_size {controller.hidden_size} != DiT width {dit_dim}")
            if len(self.dit.blocks) != controller.num_layers:
                raise ValueError(f"action controller num_layers {controller.num_layers} != "
                                 f"DiT blocks {len(self.dit.blocks)}")
            controller = controller.to(device=self.device, dtype=self.torch_dtype).eval()
        self.action_controller = controller
        if magnitude_scale is not None:
            self.action_magnitude_scale = tuple(check_scale(magnitude_scale, "action_magnitude_scale").tolist())
        return self

    def load_action_artifacts(self, folder: str) -> "WanActionPipeline":
        """Rebuild the controller from ``action_train_config.json``, load its weights strictly, apply the LoRA
        if one is configured, and adopt the saved magnitude scale."""
        apply_artifacts(self, folder)
        return self

    # ---- generation ----------------------------------------------------------------------------------------
    def resolve_actions(self, num_frames: int, actions=None, action_binary=None, action_magnitude=None):
        """Validate either action form against num_frames; returns scaled ``(B, T, 8)`` tensors or (None, None)."""
        if actions is not None and (action_binary is not None or action_magnitude is not None):
            raise ValueError("pass either actions= (raw (T,2,8)) or action_binary=/action_magnitude= "
                             "(already scaled), not both")
        if actions is not None:
            binary, magnitude = split_actions(actions, self.action_magnitude_scale)
        elif action_binary is not None or action_magnitude is not None:
            binary, magnitude = check_split_actions(action_binary, action_magnitude)
        else:
            return None, None
        if self.action_controller is None:
            raise ValueError("actions were given but the pipeline has no action controller "
                             "(call pipe.set_action_controller(...) or pipe.load_action_artifacts(folder))")
        expected = num_actions_for_frames(num_frames)
        if binary.shape[1] != expected:
            raise ValueError(f"actions: {binary.shape[1]} steps given, but num_frames={num_frames} needs {expected} "
                             f"(one per latent frame after the first: (num_frames - 1) // 4)")
        if expected > self.action_controller.num_latent_frames:
            raise ValueError(f"actions: num_frames={num_frames} needs {expected} steps, more than the controller's "
                             f"num_latent_frames ({self.action_controller.num_latent_frames})")
        return binary, magnitude

    def check_shape(self, height: int, width: int, num_frames: int) -> None:
        num_actions_for_frames(num_frames)
        for name, value, factor in (("height", height, self.height_division_factor),
                                    ("width", width, self.width_division_factor)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
                raise ValueError(f"{name} must be a positive multiple of {factor}, got {value}")

    @torch.no_grad()
    def __call__(self, *args, actions=None, action_binary=None, action_magnitude=None, action_guidance=1.0,
                 action_guidance_rescale=0.0, **kwargs):
        """The stock call plus actions; ``action_guidance`` g > 1 generates ``hover + g * (commanded - hover)``
        (one batched DiT forward of twice the batch per step; 1 = off); ``action_guidance_rescale`` in [0, 1]
        pulls the guided prediction back to the commanded one's standard deviation (0 = off)."""
        height, width = kwargs.get("height", 480), kwargs.get("width", 832)
        num_frames = kwargs.get("num_frames", 81)
        self.check_shape(height, width, num_frames)
        check_action_guidance(action_guidance)
        check_action_guidance_rescale(action_guidance_rescale)
        binary, magnitude = self.resolve_actions(num_frames, actions, action_binary, action_magnitude)
        if binary is None:
            if action_guidance != 1.0:
                raise ValueError("action_guidance needs actions (actions= or action_binary=/action_magnitude=)")
            with decoding_with(self):
                return super().__call__(*args, **kwargs)
        stock_model_fn = self.model_fn
        self.model_fn = functools.partial(stock_model_fn, action_binary=binary, action_magnitude=magnitude,
                                          action_guidance=float(action_guidance),
                                          action_guidance_rescale=float(action_guidance_rescale))
        try:
            with decoding_with(self):
                return super().__call__(*args, **kwargs)
        finally:
            self.model_fn = stock_model_fn

    # ---- streaming and speed -------------------------------------------------------------------------------
    def generate_latents(self, *args, **kwargs) -> torch.Tensor:
        """``pipe(...)`` without the VAE decode: the final latents (1, 48, F, h, w); decode them with
        ``stream_decode`` (same arguments as ``__call__``, ``output_type`` is ignored)."""
        kwargs["output_type"] = "floatpoint"  # "quantized" would post-process the latents as if they were pixels
        with capture_latents(self):
            return self(*args, **kwargs)

    def stream_decode(self, latents: torch.Tensor, tiled: bool = True, tile_size=(30, 52), tile_stride=(15, 26),
                      group: int = 1) -> Iterator[torch.Tensor]:
        """Decode latents group by group: yields (1, 3, n, H, W) float video in [-1, 1]; their concatenation does not
        depend on ``group`` and equals ``__call__(output_type="floatpoint")`` with the same tiling (defaults as
        ``__call__``): bit for bit, or within a few 1e-6 on CPUs where one conv's kernel depends on the frame count
        (``models/streaming.py``)."""
        self.load_models_to_device(["vae"])
        return stream_groups(self.new_stream_decoder(tiled, tile_size, tile_stride), latents, group)

    # ---- the decoder ---------------------------------------------------------------------------------------
    def use_decoder(self, name: str, small_decoder=None) -> "WanActionPipeline":
        """Decode with ``name``: "wan" (the world's VAE decoder) or "small" (its small decoder: ``small_decoder``
        given here or attached before); see ``models.frames.decoders``."""
        if small_decoder is not None:
            attach_small_decoder(self, small_decoder)
        use_decoder(self, name)
        return self

    def set_decode_device(self, device) -> "WanActionPipeline":
        """Decode on another device (e.g. "cuda:1") while the DiT denoises on this one; None = the same."""
        set_decode_device(self, device)
        return self

    def new_stream_decoder(self, tiled: bool = False, tile_size=(34, 34), tile_stride=(18, 16)):
        """A stream decoder (``push``) of the chosen decoder: ``models.streaming.StreamDecoder`` or the small one."""
        return new_stream_decoder(self, tiled, tile_size, tile_stride)

    def open_stream(self, image, prompt: str, *, seed: int = 0, steps: int = 4, block_frames: int = 1,
                    window: int = 3, sink: bool = True, height: Optional[int] = None, width: Optional[int] = None,
                    action_guidance: float = 1.0, action_guidance_rescale: float = 0.0, cfg_scale: float = 1.0,
                    tiled: bool = False, keep_latents: bool = True, sigma_shift: float = 5.0,
                    overlap: bool = False) -> WorldStream:
        """One flight as one block-causal stream (``models.stream``): ``stream.step(actions)`` makes the next block
        of ``block_frames`` latent frames (4 video frames each) from raw ``(block_frames, 2, 8)`` actions,
        attending to the first image (``sink``) and the last ``window`` latent frames through a K/V cache. The
        size defaults to the image's. Streams generate without text CFG (``cfg_scale`` 1). ``overlap`` decodes each
        block on a lane (a second CUDA stream, or the decode device) while the next one denoises (``step_async``)."""
        if cfg_scale != 1:
            raise ValueError(f"cfg_scale: a stream generates without text CFG (1), got {cfg_scale!r}")
        size = (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else getattr(image, "size", (0, 0))
        return WorldStream(self, image, prompt, seed=seed, steps=steps,
                           settings=CausalSettings(block_frames=block_frames, window=window, sink=sink),
                           height=height or size[1], width=width or size[0], action_guidance=action_guidance,
                           action_guidance_rescale=action_guidance_rescale, sigma_shift=sigma_shift, tiled=tiled,
                           keep_latents=keep_latents, overlap=overlap)

    def compile_for_inference(self, mode: str = "default", dynamic: Optional[bool] = None) -> "WanActionPipeline":
        """torch.compile each DiT block and the controller's injection methods, in place. Compilation happens on
        the first call of each shape: warm up before serving (``server.generation.generators.warm_up``)."""
        compile_dit_and_controller(self.dit, self.action_controller, mode=mode, dynamic=dynamic)
        self.compiled = True
        return self


def compile_dit_and_controller(dit=None, controller=None, mode: str = "default",
                               dynamic: Optional[bool] = None) -> None:
    """torch.compile each DiT block and the controller's injection methods, in place (also used by the bench)."""
    for block in (dit.blocks if dit is not None else ()):
        block.compile(mode=mode, dynamic=dynamic)  # blocks share one graph: parameters are graph inputs
    if controller is not None:
        # Instance attributes shadow the methods model_fn calls; block_idx becomes a dynamic int after one
        # recompile, so 30 blocks do not exhaust the recompile limit.
        for name in ("apply_action", "add_to_tmod"):
            setattr(controller, name, torch.compile(getattr(controller, name), mode=mode, dynamic=dynamic))
