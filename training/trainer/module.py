"""The Wan side of training: build the pipeline + controller (+ LoRA) and compute the flow-matching loss.

``ActionTrainingModule`` reuses diffsynth's ``DiffusionTrainingModule`` for freezing (``switch_pipe_to_training_mode``),
LoRA injection (peft) and device transfer; the loss is diffsynth's ``FlowMatchSFTLoss``, which reaches our
``model_fn`` with the controller because ``WanActionPipeline`` lists it in ``in_iteration_models``.
Trainable parameters are kept in float32 (AdamW updates of ~1e-4 relative size vanish in bfloat16 weights); when the
frozen base is in bf16/fp16 the DiT forward runs under autocast so the two meet.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
from typing import Optional

import torch
from diffsynth.diffusion.loss import FlowMatchSFTLoss
from diffsynth.diffusion.training_module import DiffusionTrainingModule
from safetensors.torch import load_file

from models.action_format import MAGNITUDE_SCALE, split_actions
from models.artifacts import DEFAULT_BASE_MODEL_ID, ArtifactConfig, LoraConfig
from models.controller import ActionControllerConfig, WanActionController
from models.loading import build_pipeline as build_named_pipeline
from models.pipeline import WanActionPipeline
from training.trainer.config import ConfigError, TrainConfig, causal_settings, forcing_config
from training.trainer.forcing import ErrorBuffer, causal_loss, sample_window

logger = logging.getLogger(__name__)
TINY_SEED = 0  # the tiny preset's base weights: fixed, so artifacts load into models.tiny.build_tiny_pipeline(0)
# Unit outputs the loss recomputes or never reads: dropped from cached samples.
_UNCACHED = ("input_video", "input_image", "noise", "latents")


def resolve_dtype(c: TrainConfig) -> torch.dtype:
    name = c.torch_dtype if c.torch_dtype != "auto" else ("float32" if c.preset == "tiny" else "bfloat16")
    return getattr(torch, name)


def build_pipeline(c: TrainConfig, device, torch_dtype: torch.dtype):
    """(WanActionPipeline without controller, ArtifactConfig base fields)."""
    if c.preset == "tiny":
        pipe = build_named_pipeline(preset="tiny", seed=TINY_SEED, device=device, torch_dtype=torch_dtype,
                                    controller=False)
        return pipe, {"base_model_id": f"wanfly-tiny-random(seed={TINY_SEED})", "base_model_dir": None}
    if c.model_dir:
        pipe = build_named_pipeline(model_dir=c.model_dir, device=device, torch_dtype=torch_dtype,
                                    tokenizer_path=c.tokenizer_path)
        return pipe, {"base_model_id": DEFAULT_BASE_MODEL_ID, "base_model_dir": os.path.abspath(c.model_dir)}
    # compatibility: diffsynth's own model specs (they may download through modelscope)
    from diffsynth.core import ModelConfig
    from diffsynth.pipelines.wan_video import WanVideoPipeline
    configs = DiffusionTrainingModule().parse_model_configs(c.model_paths, c.model_id_with_origin_paths, device=device)
    tokenizer = ModelConfig(path=c.tokenizer_path) if c.tokenizer_path else \
        ModelConfig(model_id=DEFAULT_BASE_MODEL_ID, origin_file_pattern="google/umt5-xxl/")
    pipe = WanVideoPipeline.from_pretrained(torch_dtype=torch_dtype, device=device, model_configs=configs,
                                            tokenizer_config=tokenizer)
    return WanActionPipeline.from_base(pipe), {"base_model_id": DEFAULT_BASE_MODEL_ID, "base_model_dir": None}


def build_controller(config: ActionControllerConfig, seed: int, checkpoint: Optional[str] = None):
    """A float32 controller, initialised identically on every rank (seeded, without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controller = WanActionController.from_config(config)
    if checkpoint:
        if checkpoint.endswith(".safetensors"):
            state = load_file(checkpoint)
        else:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        try:
            controller.load_state_dict(controller.with_own_additions(state))  # lookahead, spatial_tmod: from zero
        except ValueError as error:
            raise ConfigError(f"--action_controller_checkpoint: {error}") from None
    return controller.float()


class ActionTrainingModule(DiffusionTrainingModule):
    """``forward(sample) -> loss`` for a raw sample (frames) or a cached one (``{"cached": (shared, posi, nega)}``)."""

    def __init__(self, pipe, controller: WanActionController, c: TrainConfig):
        super().__init__()
        self.pipe = pipe
        pipe.action_controller = controller  # before freezing: freeze_except looks modules up by name
        trainable = ",".join(n for n in c.trainable_models.split(",") if n) or None
        self.switch_pipe_to_training_mode(
            pipe, trainable, c.lora_base_model, c.lora_target_modules, c.lora_rank, c.lora_checkpoint)
        if trainable is None:
            controller.eval().requires_grad_(False)
        for param in self.parameters():
            if param.requires_grad:
                param.data = param.data.float()
        self.lora_base_model = c.lora_base_model
        self.cache_units, self.train_units = list(pipe.units), []  # no cache: every unit runs per step
        self.causal, self.forcing = causal_settings(c), forcing_config(c)
        self.errors = ErrorBuffer(self.forcing.error_buffer) if self.causal and self.forcing.error_prob > 0 else None
        self.flags = {"max_timestep_boundary": c.max_timestep_boundary,
                      "min_timestep_boundary": c.min_timestep_boundary,
                      "use_gradient_checkpointing": True,  # forced on, as in the seed
                      "use_gradient_checkpointing_offload": c.use_gradient_checkpointing_offload}

    # ---- inputs ------------------------------------------------------------------------------------------
    def pipeline_inputs(self, sample: dict) -> tuple[dict, dict, dict]:
        frames = sample["video"]
        shared = {"input_video": frames, "height": frames[0].size[1], "width": frames[0].size[0],
                  "num_frames": len(frames), "cfg_scale": 1, "tiled": False, "rand_device": self.pipe.device,
                  "cfg_merge": False, "vace_scale": 1, "input_image": frames[0], **self.flags}
        return shared, {"prompt": sample["prompt"]}, {}

    def split_units_for_cache(self, trained: list) -> None:
        """diffsynth's split: units that touch a trained model run at train time, the rest are cached once."""
        self.train_units, self.cache_units = self.pipe.split_pipeline_units(trained)

    @torch.no_grad()
    def encode(self, sample: dict) -> tuple[dict, dict, dict]:
        """Run the cacheable pipeline units (VAE, text encoder) -> the loss inputs, without actions."""
        inputs = self.transfer_data_to_device(self.pipeline_inputs(sample), self.pipe.device, self.pipe.torch_dtype)
        return self._run_units(self.cache_units, inputs)

    def _run_units(self, units: list, inputs: tuple) -> tuple[dict, dict, dict]:
        for unit in units:
            inputs = self.pipe.unit_runner(unit, self.pipe, *inputs)
        return inputs

    def action_inputs(self, action: torch.Tensor) -> dict:
        # Kept in float32 (transfer_data_to_device would cast them to the base dtype); model_fn casts them to the
        # controller's dtype. split_actions is the only place the magnitude scale is applied.
        binary, magnitude = split_actions(action)  # (1, T, 8) each, scaled by MAGNITUDE_SCALE
        return {"action_binary": binary.to(self.pipe.device), "action_magnitude": magnitude.to(self.pipe.device)}

    # ---- loss --------------------------------------------------------------------------------------------
    def forward(self, sample: dict, action: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.pipe.scheduler.training:  # any pipe(...) call (e.g. a preview) leaves it in inference mode
            self.pipe.scheduler.set_timesteps(1000, training=True)
        if "cached" in sample:
            shared, posi, nega = self.transfer_data_to_device(sample["cached"], self.pipe.device)
            shared, posi, _ = self._run_units(self.train_units, ({**shared, **self.flags}, posi, nega))
        else:
            shared, posi, _ = self.encode(sample)
        shared.update(self.action_inputs(sample["action"] if action is None else action))
        with self._autocast():
            if self.causal is not None:
                return self.causal_loss(shared, posi)
            return FlowMatchSFTLoss(self.pipe, **shared, **posi)

    def causal_loss(self, shared: dict, posi: dict) -> torch.Tensor:
        """--causal: the block-causal objective (``training.trainer.forcing``) on the sink + a window of the clip."""
        clip = sample_window(shared["input_latents"], shared["action_binary"], shared["action_magnitude"],
                             self.causal, random, self.forcing.first_window, self.forcing.action_change)
        return causal_loss(self.pipe.dit, self.pipe.action_controller, self.pipe.scheduler, clip.latents,
                           posi["context"], clip.binary, clip.magnitude, self.causal, self.forcing, self.errors,
                           use_gradient_checkpointing=True, adjacent=torch.tensor([clip.adjacent] * len(clip.latents)),
                           ahead_binary=clip.ahead_binary, ahead_magnitude=clip.ahead_magnitude)

    def _autocast(self):
        dtype = self.pipe.torch_dtype
        if dtype == torch.float32:
            return torch.autocast(device_type=torch.device(self.pipe.device).type, enabled=False)
        return torch.autocast(device_type=torch.device(self.pipe.device).type, dtype=dtype)

    # ---- states ------------------------------------------------------------------------------------------
    def trainable_state(self) -> dict:
        """{full parameter name: tensor} of everything that trains (what checkpoints and resume use)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict, source: str) -> None:
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ConfigError(f"--resume_from: {source} holds other trainable parameters than this run "
                              f"(missing {missing[:3]}, unexpected {extra[:3]}): controller/LoRA flags differ")
        with torch.no_grad():
            for name, tensor in state.items():
                if tensor.shape != params[name].shape:
                    raise ConfigError(f"--resume_from: {source}: {name} has shape {tuple(tensor.shape)}, "
                                      f"expected {tuple(params[name].shape)}")
                params[name].copy_(tensor)

    def lora_state(self) -> dict:
        """LoRA weights with the ``pipe.dit.`` prefix removed (``blocks.0.self_attn.q.lora_A.default.weight``)."""
        if self.lora_base_model is None:
            return {}
        prefix = f"pipe.{self.lora_base_model}."
        return {name[len(prefix):]: p.detach() for name, p in self.named_parameters()
                if name.startswith(prefix) and ".lora_" in name}


def lora_config(c: TrainConfig) -> dict:
    return LoraConfig(lora_base_model=c.lora_base_model,
                      lora_target_modules=c.lora_target_modules if c.lora_base_model else "",
                      lora_rank=c.lora_rank).__dict__.copy()


def artifact_config(controller: WanActionController, c: TrainConfig, base: dict, stats: dict, training: dict,
                    heading_frame: bool = False) -> ArtifactConfig:
    return ArtifactConfig(action_controller_config=controller.config.to_dict(), base_model_id=base["base_model_id"],
                          base_model_dir=base["base_model_dir"], action_magnitude_scale=list(MAGNITUDE_SCALE),
                          lora=lora_config(c), action_stats=stats, heading_frame=heading_frame, training=training,
                          generation=generation_record(c))


def generation_record(c: TrainConfig) -> Optional[dict]:
    """What action_train_config.json says of how the controller generates (None: chunked TI2V clips)."""
    settings = causal_settings(c)
    return None if settings is None else {"generation": "causal", **dataclasses.asdict(settings)}


def strip_for_cache(inputs: tuple[dict, dict, dict]) -> tuple[dict, dict, dict]:
    """Unit outputs worth caching, on CPU (frames and per-step noise are dropped)."""
    shared, posi, nega = inputs
    shared = {k: v for k, v in shared.items() if k not in _UNCACHED}
    move = DiffusionTrainingModule().transfer_data_to_device
    return move(shared, "cpu"), move(posi, "cpu"), move(nega, "cpu")
