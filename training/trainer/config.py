"""``TrainConfig``: every flag of ``python -m training.train`` as one dataclass (saved as JSON with the run).

The argparse parser is generated from the fields, so ``--help`` documents every flag and the names match the seed's
``train_action.sh``. ``validate`` raises ``ConfigError`` (a ValueError) naming the bad flag; the CLI prints it as a
one-line error instead of a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from models.action_format import num_actions_for_frames
from models.controller import (
    ACTION_CONTROLLER_CONFIGS,
    INJECTION_TYPES,
    ActionControllerConfig,
    resolve_controller_config,
)
from models.options import CausalSettings
from training.trainer.checkpoint import resolve_resume
from training.trainer.forcing import ForcingConfig

DEFAULT_OUTPUT = "./outputs/train/Wan2.2-TI2V-5B_action_controller"
TRAINABLE_CHOICES = ("action_controller",)


class ConfigError(ValueError):
    """A user error in the flags; the message starts with the flag's name."""


def _opt(default, help: str, group: str, type=None, choices=None, metavar=None):
    return field(default=default, metadata={"help": help, "group": group, "type": type, "choices": choices,
                                            "metavar": metavar})


@dataclass
class TrainConfig:
    # ---- base model -------------------------------------------------------------------------------------
    preset: Optional[str] = _opt(None, "'tiny': a tiny random-weight Wan2.2-TI2V (no downloads) for tests and "
                                 "laptops; replaces --model_dir", "model", str, ("tiny",))
    model_dir: Optional[str] = _opt(None, "original Wan2.2-TI2V-5B folder (preferred): diffusion_pytorch_model*"
                                    ".safetensors, models_t5_umt5-xxl-enc-bf16.pth, Wan2.2_VAE.pth, google/umt5-xxl/",
                                    "model", str)
    model_id_with_origin_paths: Optional[str] = _opt(None, "compatibility: comma-separated model_id:file_pattern "
                                                     "(downloads via modelscope)", "model", str)
    model_paths: Optional[str] = _opt(None, "compatibility: JSON list of local model files", "model", str)
    tokenizer_path: Optional[str] = _opt(None, "umt5-xxl tokenizer folder (default: <model_dir>/google/umt5-xxl/)",
                                         "model", str)
    torch_dtype: str = _opt("auto", "dtype of the frozen base models (auto: bfloat16, float32 for --preset tiny)",
                            "model", str, ("auto", "bfloat16", "float16", "float32"))
    initialize_model_on_cpu: bool = _opt(False, "load the base models on CPU first, then move them to the device",
                                         "model")
    # ---- action controller --------------------------------------------------------------------------------
    action_controller_config: Optional[str] = _opt(
        None, "controller preset (" + ", ".join(ACTION_CONTROLLER_CONFIGS) + ") or a JSON file of "
        "ActionControllerConfig fields (default: wan_ti2v_5b; tiny with --preset tiny)", "controller", str)
    action_injection_type: Optional[str] = _opt(None, "override the preset's injection type", "controller", str,
                                                INJECTION_TYPES)
    action_initial_scale: Optional[float] = _opt(None, "override the preset's initial output scale (0 = no effect "
                                                 "at start)", "controller", float)
    action_lookahead: bool = _opt(False, "--causal: the controller also tells each context frame the next frame's "
                                  "action (models.controller's lookahead; a checkpoint without it starts at zero)",
                                  "controller")
    action_joint_previous: bool = _opt(False, "--causal: each block is denoised with a clean copy of the frame "
                                       "before it, attending both ways (models.controller's joint_previous)",
                                       "controller")
    action_spatial_tmod: bool = _opt(False, "adaln_tmod: the action's modulation delta also varies linearly across "
                                     "the image (models.controller's spatial_tmod; a checkpoint without it starts "
                                     "at zero)", "controller")
    action_controller_checkpoint: Optional[str] = _opt(None, "initial controller weights (.safetensors or .pt)",
                                                       "controller", str)
    trainable_models: str = _opt("action_controller", "comma-separated models trained in full: only "
                                 "'action_controller' (or '' to train only a LoRA); the DiT trains through --lora_*",
                                 "controller", str)
    # ---- block-causal training (streams) --------------------------------------------------------------------
    causal: bool = _opt(False, "train block-causally for streams (models.causal): diffusion forcing, teacher forcing "
                        "with noised context and an error buffer (training.trainer.forcing)", "causal")
    block_frames: int = _opt(1, "--causal: latent frames per block (4 video frames each)", "causal", int)
    window: int = _opt(3, "--causal: latent frames of context besides the sink; a clip trains on the sink + "
                       "window + block_frames frames taken anywhere in the video", "causal", int)
    no_sink: bool = _opt(False, "--causal: no first-image sink in the context", "causal")
    teacher_forcing: float = _opt(0.5, "--causal: share of clips trained as clean context + one noised block "
                                  "(the rest: every block at its own noise level)", "causal", float)
    context_noise: float = _opt(0.1, "--causal: max noise level of context frames in teacher forcing", "causal",
                                float)
    error_prob: float = _opt(0.5, "--causal: chance a context frame carries a stored prediction residual (0 = no "
                             "error buffer)", "causal", float)
    error_buffer: int = _opt(256, "--causal: prediction residuals kept", "causal", int)
    first_window: float = _opt(0.25, "--causal: share of windows starting right after the sink (trains the "
                               "stream's first blocks)", "causal", float)
    action_change: float = _opt(0.5, "--causal: share of windows whose last block starts where the commanded "
                                "action changes (so the context alone cannot predict the motion)", "causal", float)
    motion_weight: float = _opt(0.0, "--causal: extra loss weight where the true clip changes from frame to frame "
                                "(0 = plain MSE; training.trainer.forcing)", "causal", float)
    rollout: float = _opt(0.0, "--causal: share of batches whose context blocks are the model's own generation "
                          "from the true frames before them (training.trainer.own_context; 0 = never)", "causal", float)
    rollout_steps: int = _opt(4, "--causal --rollout: denoising steps of the rollout (as the world serves)", "causal",
                              int)
    rollout_guidance: float = _opt(1.0, "--causal --rollout: action guidance of the rollout (1 = off)", "causal",
                                   float)
    rollout_rescale: float = _opt(0.0, "--causal --rollout: guidance rescale of the rollout (0 = off)", "causal",
                                  float)
    # ---- LoRA ---------------------------------------------------------------------------------------------
    lora_base_model: Optional[str] = _opt(None, "'dit' to train a LoRA on the DiT as well", "lora", str, ("dit",))
    lora_target_modules: str = _opt("q,k,v,o,ffn.0,ffn.2", "comma-separated DiT Linear names the LoRA patches",
                                    "lora", str)
    lora_rank: int = _opt(32, "LoRA rank (lora_alpha = rank, as diffsynth)", "lora", int)
    lora_checkpoint: Optional[str] = _opt(None, "initial LoRA weights (.safetensors)", "lora", str)
    # ---- data ---------------------------------------------------------------------------------------------
    dataset_base_path: Optional[str] = _opt(None, "dataset root; CSV video paths are relative to it (required)",
                                            "data", str)
    dataset_metadata_path: Optional[str] = _opt(None, "CSV with columns video,prompt,action (action: JSON (T,2,8)); "
                                                "default <dataset_base_path>/metadata.csv", "data", str)
    dataset_repeat: int = _opt(1, "count every row this many times per epoch", "data", int)
    dataset_num_workers: int = _opt(0, "DataLoader worker processes per rank", "data", int)
    data_file_keys: str = _opt("video", "CSV columns holding files (only 'video' is supported)", "data", str)
    height: Optional[int] = _opt(None, "frame height, multiple of 32 (default: from the video, capped by "
                                 "--max_pixels)", "data", int)
    width: Optional[int] = _opt(None, "frame width, multiple of 32 (see --height)", "data", int)
    max_pixels: int = _opt(1024 * 1024, "pixel cap per frame when --height/--width are not given", "data", int)
    num_frames: int = _opt(81, "frames per clip, 4k+1; the first num_frames frames are used, with "
                           "(num_frames-1)//4 actions", "data", int)
    on_bad_sample: str = _opt("error", "what a bad CSV row (missing/unreadable video, too few frames, bad action) "
                              "does at start-up validation: 'error' stops with every bad row listed, 'skip' drops "
                              "them", "data", str, ("error", "skip"))
    cache_dir: Optional[str] = _opt(None, "split training: encode VAE latents + text embeddings once into this "
                                    "folder (reused when it matches), then train on the cache", "data", str)
    # ---- optimisation -------------------------------------------------------------------------------------
    learning_rate: float = _opt(1e-4, "peak learning rate (AdamW)", "optim", float)
    lr_warmup_ratio: float = _opt(0.0, "fraction of the optimizer steps with linear warmup", "optim", float)
    lr_min_lr: float = _opt(0.0, "cosine decay floor reached at the last step", "optim", float)
    weight_decay: float = _opt(0.01, "AdamW weight decay", "optim", float)
    max_grad_norm: float = _opt(1.0, "clip the gradient norm to this (0 disables)", "optim", float)
    max_steps: Optional[int] = _opt(None, "optimizer steps to train (default: --num_epochs over the data)", "optim",
                                    int)
    num_epochs: int = _opt(1, "passes over the data when --max_steps is not given", "optim", int)
    gradient_accumulation_steps: int = _opt(1, "micro-batches (one clip each) per optimizer step and process",
                                            "optim", int)
    max_timestep_boundary: float = _opt(1.0, "sample training timesteps below this fraction of the schedule",
                                        "optim", float)
    min_timestep_boundary: float = _opt(0.0, "sample training timesteps above this fraction", "optim", float)
    use_gradient_checkpointing: bool = _opt(False, "accepted for compatibility: gradient checkpointing is always "
                                            "on (as in the seed)", "optim")
    use_gradient_checkpointing_offload: bool = _opt(False, "keep checkpointed activations in CPU memory", "optim")
    seed: int = _opt(0, "seed of the data order, noise and timesteps (rank r uses seed + r)", "optim", int)
    # ---- output, checkpoints, logging ---------------------------------------------------------------------
    output_path: str = _opt(DEFAULT_OUTPUT, "run folder: action_train_config.json, action_controller.safetensors, "
                            "lora.safetensors, checkpoints/", "output", str)
    log_steps: int = _opt(10, "log loss, lr, step time and samples/s every N optimizer steps", "output", int)
    save_steps: Optional[int] = _opt(None, "every N steps refresh the inference artifacts (and write a checkpoint "
                                     "with --save_full_state)", "output", int)
    save_full_state: bool = _opt(False, "write resumable checkpoints/step-*/ (weights, optimizer, scheduler, RNG, "
                                 "data order)", "output")
    resume_from: Optional[str] = _opt(None, "continue exactly from a checkpoints/step-* folder, or 'latest' (the "
                                      "newest in --output_path; starts fresh when there is none)", "output", str)
    max_checkpoints: Optional[int] = _opt(None, "keep only the newest N checkpoints", "output", int)
    use_wandb: bool = _opt(False, "also log to Weights & Biases (optional; skipped with a warning if wandb is not "
                           "installed)", "output")
    wandb_project: str = _opt("wan-ti2v-action", "wandb project", "output", str)
    wandb_run_name: Optional[str] = _opt(None, "wandb run name", "output", str)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


GROUP_TITLES = {"model": "base model", "controller": "action controller", "causal": "block-causal training",
                "lora": "LoRA", "data": "data",
                "optim": "optimisation", "output": "output, checkpoints and logging"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the Wan2.2-TI2V-5B action controller (and optionally a DiT LoRA). Run with "
                    "`accelerate launch -m training.train ...` for several processes (configs in training/configs/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in dataclasses.fields(TrainConfig):
        meta, group = f.metadata, groups[f.metadata["group"]]
        if meta["type"] is None:  # booleans are switches
            group.add_argument(f"--{f.name}", action="store_true", default=f.default, help=meta["help"])
        else:
            group.add_argument(f"--{f.name}", type=meta["type"], default=f.default, choices=meta["choices"],
                               help=meta["help"])
    return parser


def parse_config(argv=None) -> TrainConfig:
    return TrainConfig(**vars(build_parser().parse_args(argv)))


# ---- validation --------------------------------------------------------------------------------------------
def _require(condition: bool, flag: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"--{flag}: {message}")


def _check_model_source(c: TrainConfig) -> None:
    sources = [name for name in ("preset", "model_dir", "model_id_with_origin_paths", "model_paths")
               if getattr(c, name)]
    if not sources:
        raise ConfigError("--model_dir: no base model given (pass --model_dir DIR, --preset tiny, or "
                          "--model_id_with_origin_paths/--model_paths)")
    if "preset" in sources and len(sources) > 1:
        raise ConfigError(f"--preset: cannot be combined with --{sources[1]}")
    if "model_dir" in sources and len(sources) > 1:
        raise ConfigError(f"--model_dir: cannot be combined with --{sources[1]}")
    if c.model_dir:
        _require(os.path.isdir(c.model_dir), "model_dir", f"{c.model_dir!r} is not a folder")
    if c.model_paths:
        try:
            paths = json.loads(c.model_paths)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--model_paths: not a JSON list ({error.msg})") from None
        _require(isinstance(paths, list) and paths, "model_paths", "expected a non-empty JSON list of files")


def _check_controller(c: TrainConfig) -> None:
    name = c.action_controller_config
    if name is not None and name not in ACTION_CONTROLLER_CONFIGS:
        _require(name.endswith(".json") and os.path.isfile(name), "action_controller_config",
                 f"{name!r} is neither a preset ({', '.join(ACTION_CONTROLLER_CONFIGS)}) nor an existing .json file")
    if c.preset == "tiny" and name not in (None, "tiny"):
        _require(name.endswith(".json"), "action_controller_config",
                 f"{name!r} does not fit the tiny preset's DiT (use 'tiny' or leave it out)")
    for name in ("action_lookahead", "action_joint_previous"):
        _require(c.causal or not getattr(c, name), name, "needs --causal (a setting of block-causal streams; "
                 "chunked generation has no blocks)")
    preset = ACTION_CONTROLLER_CONFIGS.get(_controller_name(c), {})  # {} for a JSON file: checked when resolved
    kind = c.action_injection_type or preset.get("injection_type")
    _require(not c.action_spatial_tmod or kind in (None, "adaln_tmod"), "action_spatial_tmod",
             f"needs --action_injection_type adaln_tmod (the controller's injection type is {kind!r})")
    _require(not c.action_joint_previous or c.window >= 1, "window", "--action_joint_previous needs --window >= 1 "
             "(the frame before a block must be in its context)")
    if c.action_controller_checkpoint:
        _require(os.path.isfile(c.action_controller_checkpoint), "action_controller_checkpoint",
                 f"{c.action_controller_checkpoint!r} does not exist")
    names = [n for n in c.trainable_models.split(",") if n]
    bad = [n for n in names if n not in TRAINABLE_CHOICES]
    _require(not bad, "trainable_models", f"{bad} cannot be trained in full; only 'action_controller' can "
             "(train the DiT with --lora_base_model dit)")
    _require(bool(names) or c.lora_base_model, "trainable_models",
             "nothing to train: give 'action_controller' or --lora_base_model dit")


def _check_data(c: TrainConfig) -> None:
    _require(bool(c.dataset_base_path), "dataset_base_path", "required (the dataset root folder)")
    _require(os.path.isdir(c.dataset_base_path), "dataset_base_path", f"{c.dataset_base_path!r} is not a folder")
    metadata = c.dataset_metadata_path or os.path.join(c.dataset_base_path, "metadata.csv")
    _require(os.path.isfile(metadata), "dataset_metadata_path", f"{metadata!r} does not exist")
    _require(c.data_file_keys == "video", "data_file_keys", f"only 'video' is supported, got {c.data_file_keys!r}")
    try:
        num_actions_for_frames(c.num_frames)
    except ValueError as error:
        raise ConfigError(f"--num_frames: {error}") from None
    _require((c.height is None) == (c.width is None), "height", "give both --height and --width, or neither")
    for name in ("height", "width"):
        value = getattr(c, name)
        _require(value is None or (value > 0 and value % 32 == 0), name,
                 f"must be a positive multiple of 32, got {value}")
    _require(c.max_pixels >= 32 * 32, "max_pixels", f"must be >= 1024, got {c.max_pixels}")
    _require(c.dataset_repeat >= 1, "dataset_repeat", f"must be >= 1, got {c.dataset_repeat}")
    _require(c.dataset_num_workers >= 0, "dataset_num_workers", f"must be >= 0, got {c.dataset_num_workers}")


def _check_optim(c: TrainConfig) -> None:
    _require(c.learning_rate > 0, "learning_rate", f"must be > 0, got {c.learning_rate}")
    _require(0 <= c.lr_min_lr <= c.learning_rate, "lr_min_lr", f"must be within 0..--learning_rate "
             f"({c.learning_rate}), got {c.lr_min_lr}")
    _require(0 <= c.lr_warmup_ratio < 1, "lr_warmup_ratio", f"must be within [0, 1), got {c.lr_warmup_ratio}")
    _require(c.weight_decay >= 0, "weight_decay", f"must be >= 0, got {c.weight_decay}")
    _require(c.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {c.max_grad_norm}")
    _require(c.max_steps is None or c.max_steps >= 1, "max_steps", f"must be >= 1, got {c.max_steps}")
    _require(c.num_epochs >= 1, "num_epochs", f"must be >= 1, got {c.num_epochs}")
    _require(c.gradient_accumulation_steps >= 1, "gradient_accumulation_steps",
             f"must be >= 1, got {c.gradient_accumulation_steps}")
    _require(0 <= c.min_timestep_boundary < c.max_timestep_boundary <= 1, "min_timestep_boundary",
             f"need 0 <= --min_timestep_boundary < --max_timestep_boundary <= 1, got {c.min_timestep_boundary} "
             f"and {c.max_timestep_boundary}")
    _require(c.lora_rank >= 1, "lora_rank", f"must be >= 1, got {c.lora_rank}")
    if c.lora_checkpoint:
        _require(c.lora_base_model is not None, "lora_checkpoint", "needs --lora_base_model dit")
        _require(os.path.isfile(c.lora_checkpoint), "lora_checkpoint", f"{c.lora_checkpoint!r} does not exist")


def _check_output(c: TrainConfig) -> None:
    _require(c.log_steps >= 1, "log_steps", f"must be >= 1, got {c.log_steps}")
    _require(c.save_steps is None or c.save_steps >= 1, "save_steps", f"must be >= 1, got {c.save_steps}")
    _require(c.max_checkpoints is None or c.max_checkpoints >= 1, "max_checkpoints",
             f"must be >= 1, got {c.max_checkpoints}")
    _require(c.max_checkpoints is None or c.save_full_state, "max_checkpoints", "needs --save_full_state")
    _require(not c.save_full_state or c.save_steps is not None, "save_full_state",
             "needs --save_steps N (how often to write a checkpoint)")
    _require(not os.path.isfile(c.output_path), "output_path", f"{c.output_path!r} is a file")
    if c.resume_from not in (None, "latest"):
        try:
            resolve_resume(c.resume_from, "")
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _controller_name(c: TrainConfig) -> str:
    """--action_controller_config, or the model preset's own controller preset when it is not given."""
    return c.action_controller_config or ("tiny" if c.preset == "tiny" else "wan_ti2v_5b")


def controller_config(c: TrainConfig) -> ActionControllerConfig:
    """The preset (or JSON file) with --action_injection_type / --action_initial_scale applied."""
    name = source = _controller_name(c)
    try:
        if name.endswith(".json"):
            with open(name) as handle:
                source = json.load(handle)
        config = resolve_controller_config(source, injection_type=c.action_injection_type,
                                           initial_scale=c.action_initial_scale,
                                           lookahead=True if c.action_lookahead else None,
                                           joint_previous=True if c.action_joint_previous else None,
                                           spatial_tmod=True if c.action_spatial_tmod else None)
    except ValueError as error:
        raise ConfigError(f"--action_controller_config: {error}") from None
    steps = num_actions_for_frames(c.num_frames)
    if steps > config.num_latent_frames:
        raise ConfigError(f"--num_frames: {c.num_frames} frames need {steps} actions, more than the controller's "
                          f"num_latent_frames ({config.num_latent_frames})")
    return config


def causal_settings(c: TrainConfig) -> Optional[CausalSettings]:
    """The block/window settings of a --causal run (checked by name), else None."""
    if not c.causal:
        return None
    try:
        return CausalSettings(block_frames=c.block_frames, window=c.window, sink=not c.no_sink)
    except ValueError as error:
        raise ConfigError(_flag_message(error)) from None


def forcing_config(c: TrainConfig) -> ForcingConfig:
    try:
        return ForcingConfig(teacher_forcing=c.teacher_forcing, context_noise=c.context_noise,
                             error_prob=c.error_prob, error_buffer=c.error_buffer, first_window=c.first_window,
                             action_change=c.action_change, motion_weight=c.motion_weight, rollout=c.rollout,
                             rollout_steps=c.rollout_steps, rollout_guidance=c.rollout_guidance,
                             rollout_rescale=c.rollout_rescale)
    except ValueError as error:
        raise ConfigError(_flag_message(error)) from None


def _flag_message(error: ValueError) -> str:
    """"window must be ..." -> "--window: must be ..." (the CLI's form: the flag first)."""
    name, _, rest = str(error).partition(" ")
    return f"--{name}: {rest}"


def validate(c: TrainConfig) -> TrainConfig:
    """Check every flag; raises ConfigError naming the first bad one. File checks happen here, model loading not."""
    _check_model_source(c)
    _check_controller(c)
    _check_data(c)
    _check_optim(c)
    _check_output(c)
    controller_config(c)  # preset + overrides valid, enough num_latent_frames for --num_frames
    causal_settings(c), forcing_config(c)
    return c


def metadata_path(c: TrainConfig) -> str:
    return c.dataset_metadata_path or os.path.join(c.dataset_base_path, "metadata.csv")
