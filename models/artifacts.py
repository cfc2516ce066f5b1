"""The inference artifacts a training run writes, and how a pipeline loads them.

    <folder>/action_train_config.json   base model, action_controller_config, action_magnitude_scale, lora, stats
    <folder>/action_controller.safetensors
    <folder>/lora.safetensors            only when the config's lora.lora_base_model is set

Loading rebuilds the controller from the JSON, loads its weights strictly (seed all-branch layouts accepted,
see WanActionController.load_state_dict), fuses the LoRA if configured and adopts the saved magnitude scale.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from safetensors.torch import load_file, save_file

from .action_format import MAGNITUDE_SCALE, check_scale
from .config_io import read_json_file
from .controller import ActionControllerConfig, WanActionController
from .lora import fuse_lora
from .model_dir import CONFIG_NAME, CONTROLLER_NAME, LORA_NAME  # the folder's file names live with no torch

DEFAULT_BASE_MODEL_ID = "Wan-AI/Wan2.2-TI2V-5B"


@dataclass
class LoraConfig:
    lora_base_model: Optional[str] = None  # "dit" when a LoRA was trained, else None
    lora_target_modules: str = ""
    lora_rank: int = 32
    lora_alpha: Optional[float] = None  # None = lora_rank (diffsynth's default)


@dataclass
class ArtifactConfig:
    """Contents of action_train_config.json."""
    action_controller_config: dict
    base_model_id: str = DEFAULT_BASE_MODEL_ID
    base_model_dir: Optional[str] = None
    action_magnitude_scale: list = field(default_factory=lambda: list(MAGNITUDE_SCALE))
    lora: dict = field(default_factory=lambda: LoraConfig().__dict__.copy())
    action_stats: Optional[dict] = None
    heading_frame: bool = False
    training: Optional[dict] = None  # the run's arguments and final step, for the record
    # how the controller was trained to generate: None (chunked TI2V clips) or {"generation": "causal",
    # "block_frames", "window", "sink"} for a block-causal run (streams, models.stream)
    generation: Optional[dict] = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict, source: str = CONFIG_NAME) -> "ArtifactConfig":
        if "action_controller_config" not in data:
            raise ValueError(f"{source}: missing 'action_controller_config'")
        known = set(cls.__dataclass_fields__)
        config = cls(**{k: v for k, v in data.items() if k in known})
        ActionControllerConfig.from_dict(config.action_controller_config)  # validates (unknown type, sizes)
        check_scale(config.action_magnitude_scale, f"{source}: action_magnitude_scale")
        lora_known = set(LoraConfig.__dataclass_fields__)
        unknown = sorted(set(config.lora or {}) - lora_known)
        if unknown:
            raise ValueError(f"{source}: lora has unknown field(s) {unknown}")
        config.lora = {**LoraConfig().__dict__, **(config.lora or {})}
        return config


def save_action_artifacts(folder: str, controller: WanActionController, config: ArtifactConfig,
                          lora_state: Optional[dict] = None) -> None:
    """Write the JSON, the controller weights and (if given) the LoRA weights into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    config.action_controller_config = controller.config.to_dict()
    if lora_state and not config.lora.get("lora_base_model"):
        raise ValueError("lora_state given but config.lora.lora_base_model is not set")
    state = {k: v.detach().to("cpu").contiguous() for k, v in controller.state_dict().items()}
    save_file(state, os.path.join(folder, CONTROLLER_NAME))
    if lora_state:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in lora_state.items()},
                  os.path.join(folder, LORA_NAME))
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(config.to_dict(), f, indent=2)


def load_artifact_config(folder: str) -> ArtifactConfig:
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"artifacts folder {folder!r} has no {CONFIG_NAME}")
    return ArtifactConfig.from_dict(read_json_file(path), source=path)


def load_controller(folder: str) -> tuple[WanActionController, ArtifactConfig]:
    """Rebuild the controller from the folder's JSON and load its weights strictly."""
    config = load_artifact_config(folder)
    weights = os.path.join(folder, CONTROLLER_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"artifacts folder {folder!r} has no {CONTROLLER_NAME}")
    controller = WanActionController.from_config(config.action_controller_config)
    controller.load_state_dict(load_file(weights))
    return controller.eval(), config


def apply_artifacts(pipe, folder: str) -> ArtifactConfig:
    """Attach a folder's controller (and LoRA) to a WanActionPipeline."""
    controller, config = load_controller(folder)
    lora = config.lora
    if lora.get("lora_base_model"):
        if lora["lora_base_model"] != "dit":
            raise ValueError(f"lora.lora_base_model {lora['lora_base_model']!r}: only 'dit' is supported")
        lora_path = os.path.join(folder, LORA_NAME)
        if not os.path.isfile(lora_path):
            raise FileNotFoundError(f"{CONFIG_NAME} configures a LoRA but {lora_path} is missing")
        fuse_lora(pipe.dit, load_file(lora_path), alpha=1.0, lora_alpha=lora.get("lora_alpha"))
    pipe.set_action_controller(controller, magnitude_scale=config.action_magnitude_scale)
    pipe.lora_config = lora
    pipe.action_stats = config.action_stats
    return config
