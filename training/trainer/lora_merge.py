"""Merge a trained DiT LoRA into the base weights, writing a new base folder for the next training stage.

    python -m training.merge_lora --model_dir WAN --lora_path RUN/lora.safetensors --alpha 1.0 \
        [--output_dir ./outputs/merged/<base_name>_merged] [--overwrite]

``--lora_path`` may also be a training run folder (its ``lora.safetensors`` and the ``lora_alpha`` of its
``action_train_config.json`` are used). The output holds the merged ``diffusion_pytorch_model*.safetensors`` shards
(same names, keys, dtypes and shard index) and every other file of the base folder (T5, VAE, tokenizer, ...)
hard-linked when possible, else copied, plus ``merge_info.json``; ``WanActionPipeline.from_model_dir`` loads it.
The folder is assembled under a temporary name and renamed into place, so a failed merge leaves nothing half-done.
The math is ``models.lora.fuse_lora`` (the same as loading the LoRA for inference): W += alpha * lora_alpha/rank * B A.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from typing import Optional

import torch

from models.artifacts import CONFIG_NAME, LORA_NAME
from models.lora import fuse_lora, lora_pairs
from models.model_dir import check_model_dir
from training.trainer.checkpoint import replace_dir

DIT_PATTERN = "diffusion_pytorch_model*.safetensors"


def _holder(weights: dict) -> torch.nn.Module:
    """A module tree whose ``<name>.weight`` are the given tensors, so fuse_lora can address them by name."""
    root = torch.nn.Module()
    for name, weight in weights.items():
        module = root
        for part in name.split("."):
            if part not in module._modules:
                module.add_module(part, torch.nn.Module())
            module = module._modules[part]
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
    return root


def merge_lora_state(base_state: dict, lora_state: dict, alpha: float = 1.0,
                     lora_alpha: Optional[float] = None) -> dict:
    """A new state dict: ``base_state`` with every LoRA pair of ``lora_state`` fused into its ``.weight``.

    ``base_state`` is not modified; every LoRA target must be present (ValueError otherwise)."""
    pairs = lora_pairs(lora_state)
    missing = sorted(name for name in pairs if f"{name}.weight" not in base_state)
    if missing:
        raise ValueError(f"lora: {len(missing)} target weights not in the base state dict, e.g. {missing[:3]}")
    holder = _holder({name: base_state[f"{name}.weight"].clone() for name in pairs})
    fuse_lora(holder, lora_state, alpha=alpha, lora_alpha=lora_alpha)
    merged = dict(base_state)
    for name in pairs:
        merged[f"{name}.weight"] = holder.get_submodule(name).weight.data
    return merged


def _lora_subset(lora_state: dict, names: set) -> dict:
    return {k: v for k, v in lora_state.items() if k.replace(".default.", ".").rsplit(".lora_", 1)[0] in names}


def merge_shards(model_dir: str, out_dir: str, lora_state: dict, alpha: float, lora_alpha: Optional[float]) -> list:
    """Write every DiT shard of ``model_dir`` into ``out_dir`` with the LoRA fused; returns the merged modules."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    pairs = lora_pairs(lora_state)
    merged_names = []
    for shard in sorted(glob.glob(os.path.join(model_dir, DIT_PATTERN))):
        with safe_open(shard, "pt") as handle:
            metadata = handle.metadata()
        state = load_file(shard)
        here = {name for name in pairs if f"{name}.weight" in state}
        if here:
            state = merge_lora_state(state, _lora_subset(lora_state, here), alpha, lora_alpha)
        save_file(state, os.path.join(out_dir, os.path.basename(shard)), metadata=metadata)
        merged_names += sorted(here)
    missing = sorted(set(pairs) - set(merged_names))
    if missing:
        raise ValueError(f"lora: {len(missing)} target weights are in no DiT shard of {model_dir}, e.g. {missing[:3]} "
                         "(was the LoRA trained on this base model?)")
    return merged_names


def _link_or_copy(src: str, dst: str, mode: str) -> None:
    if mode in ("auto", "hardlink"):
        try:
            os.link(src, dst)
            return
        except OSError:
            if mode == "hardlink":
                raise
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copy2(src, dst)


def copy_other_files(model_dir: str, out_dir: str, mode: str) -> None:
    """Everything but the DiT shards (T5, VAE, tokenizer folder, configs, index) into ``out_dir``."""
    shards = {os.path.basename(p) for p in glob.glob(os.path.join(model_dir, DIT_PATTERN))}
    for name in sorted(os.listdir(model_dir)):
        src, dst = os.path.join(model_dir, name), os.path.join(out_dir, name)
        if name in shards:
            continue
        if os.path.isdir(src):
            shutil.copytree(src, dst, copy_function=lambda s, d: _link_or_copy(s, d, mode))
        else:
            _link_or_copy(src, dst, mode)


def load_lora(lora_path: str) -> tuple[dict, Optional[float]]:
    """(LoRA state, lora_alpha from a run folder's config or None = rank)."""
    from safetensors.torch import load_file


    folder = lora_path if os.path.isdir(lora_path) else os.path.dirname(lora_path)
    path = os.path.join(lora_path, LORA_NAME) if os.path.isdir(lora_path) else lora_path
    if not os.path.isfile(path):
        raise ValueError(f"--lora_path: {path!r} does not exist")
    lora_alpha = None
    config_path = os.path.join(folder, CONFIG_NAME)
    if os.path.isfile(config_path):
        with open(config_path) as handle:
            lora_alpha = (json.load(handle).get("lora") or {}).get("lora_alpha")
    return load_file(path), lora_alpha


def default_output_dir(model_dir: str) -> str:
    return os.path.join(".", "outputs", "merged", f"{os.path.basename(os.path.normpath(model_dir))}_merged")


def merge_folder(model_dir: str, lora_path: str, alpha: float = 1.0, output_dir: Optional[str] = None,
                 overwrite: bool = False, link: str = "auto") -> str:
    """The CLI's work; raises ValueError naming the bad flag. Returns the output folder."""
    try:
        check_model_dir(model_dir)
    except FileNotFoundError as error:
        raise ValueError(f"--model_dir: {error}") from None
    output_dir = output_dir or default_output_dir(model_dir)
    if os.path.abspath(output_dir) == os.path.abspath(model_dir):
        raise ValueError("--output_dir: must differ from --model_dir")
    if os.path.exists(output_dir) and not overwrite:
        raise ValueError(f"--output_dir: {output_dir!r} exists; pass --overwrite to replace it")
    lora_state, lora_alpha = load_lora(lora_path)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        merged = merge_shards(model_dir, tmp, lora_state, alpha, lora_alpha)
        copy_other_files(model_dir, tmp, link)
        info = {"base_model_dir": os.path.abspath(model_dir), "lora_path": os.path.abspath(lora_path),
                "alpha": alpha, "lora_alpha": lora_alpha, "merged_modules": len(merged)}
        with open(os.path.join(tmp, "merge_info.json"), "w") as handle:
            json.dump(info, handle, indent=2)
        replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir
