"""The original Wan2.2-TI2V-5B folder layout (as its publisher ships it), the DiT's settings, the check of a
folder against the layout, and the file names of a training run's artifacts folder (``models.artifacts``).

No torch or diffsynth here, so command lines can check a ``--model_dir`` or ``--artifacts`` before they load anything
heavy.
"""
from __future__ import annotations

import glob
import os

# The original Wan2.2-TI2V-5B folder layout that from_model_dir expects.
MODEL_DIR_LAYOUT = {
    "dit": "diffusion_pytorch_model*.safetensors",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "vae": "Wan2.2_VAE.pth",
    "tokenizer": "google/umt5-xxl/",
}

# A training run's artifacts folder (written and read by models.artifacts).
CONFIG_NAME = "action_train_config.json"
CONTROLLER_NAME = "action_controller.safetensors"
LORA_NAME = "lora.safetensors"


# The Wan2.2-TI2V-5B DiT (diffsynth's registered config for it).
WAN_5B_DIT = dict(dim=3072, num_heads=24, num_layers=30, ffn_dim=14336, in_dim=48, out_dim=48, text_dim=4096,
                  freq_dim=256, eps=1e-6, patch_size=(1, 2, 2), has_image_input=False, seperated_timestep=True,
                  require_clip_embedding=False, require_vae_embedding=False, fuse_vae_embedding_in_latents=True)


def find_missing_model_files(model_dir: str) -> list[str]:
    missing = []
    for role, pattern in MODEL_DIR_LAYOUT.items():
        if pattern.endswith("/"):
            if not os.path.isdir(os.path.join(model_dir, pattern)):
                missing.append(pattern)
        elif not glob.glob(os.path.join(model_dir, pattern)):
            missing.append(pattern)
    return missing


def check_model_dir(model_dir: str) -> None:
    """Raise FileNotFoundError listing every missing file of an original Wan2.2-TI2V-5B folder."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir {model_dir!r} is not a folder")
    missing = find_missing_model_files(model_dir)
    if missing:
        layout = "\n".join(f"  {pattern}    ({role})" for role, pattern in MODEL_DIR_LAYOUT.items())
        raise FileNotFoundError(
            f"model_dir {model_dir!r} is missing: {', '.join(missing)}.\n"
            f"Expected the original Wan2.2-TI2V-5B layout:\n{layout}")
