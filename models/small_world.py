"""Small worlds of the real Wan2.2-TI2V architecture, built in code with no downloads, and their folder format.

A small world is a narrow ``WanModel`` with the TI2V settings (fused first frame, per-token timestep), the real
``VideoVAE38_`` at a reduced width (z_dim 48, 16x spatial, 4x temporal compression), a small umT5-style
``WanTextEncoder`` and a word-level tokenizer: every call runs the same diffsynth code path as the 5B model.
``SmallWorldConfig`` describes one; the tiny random preset (``models.tiny``) is its default, the toy world
(``worlds/toy/``) a trained one. A world folder holds:

    world_config.json        {"format": "wanfly-small-world", "config": SmallWorldConfig, ...recipe and report}
    dit.safetensors  vae.safetensors  text_encoder.safetensors
    action_train_config.json + action_controller.safetensors   its controller (models.artifacts), optional
    serve.json               serving defaults (models.serve_config), optional
    small_decoder/           a small distilled decoder (models.frames.small_decoder), optional
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

from .artifacts import CONFIG_NAME
from .config_io import config_from_dict
from .controller import WanActionController
from .frames.decoders import attach_small_decoder
from .frames.small_decoder import FOLDER as SMALL_DECODER_FOLDER
from .frames.small_decoder import load_small_decoder
from .pipeline import WanActionPipeline

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
# Words of the synthetic flight prompts and common scene words; anything else maps to <unk>.
BASE_VOCAB = tuple(sorted(set("""
a an the of and with over under above below near far into across through at in on by to from is are
drone flies flying flight fly camera view aerial scene world landscape sky ground field fields grass meadow
desert snow water lake sea ocean river beach sand rock rocks mountain mountains hill hills forest trees tree
city town village buildings building tower towers road roads bridge pillars pillar columns column boxes box
checkered tiled striped patterned textured green red blue yellow orange purple white black grey gray brown
pink cyan golden dark bright pale colourful colorful sunny cloudy foggy misty clear dusk dawn noon night
sunset sunrise morning evening day light soft warm cool tall short small large big wide tiny
""".split())))


@dataclass
class SmallWorldConfig:
    """Architecture of a small Wan2.2-TI2V-style world (DiT + VAE + text encoder + word tokenizer)."""
    dim: int = 64
    num_heads: int = 2
    num_layers: int = 2
    ffn_dim: int = 128
    text_dim: int = 32
    text_heads: int = 2
    text_layers: int = 2
    text_ffn_dim: int = 64
    text_seq_len: int = 32
    vae_dim: int = 16
    vae_dec_dim: int = 16
    patch: int = 2  # a DiT token is patch x patch latent cells (Wan2.2: 2); 1 gives 4x the tokens of a frame
    vocab: list[str] = field(default_factory=lambda: list(BASE_VOCAB))

    def __post_init__(self):
        head_dim = self.dim // max(self.num_heads, 1)
        if self.dim % self.num_heads or (head_dim // 3) % 2:
            raise ValueError(f"dim/num_heads = {head_dim}: Wan's 3D RoPE needs head_dim // 3 even (24, 32, 48, 128)")
        if type(self.patch) is not int or self.patch not in (1, 2):  # not bool, not float
            raise ValueError(f"patch: 1 or 2 latent cells per DiT token side, got {self.patch!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SmallWorldConfig":
        return config_from_dict(cls, data, "world config")


def build_word_tokenizer(words, seq_len: int):
    """A diffsynth HuggingfaceTokenizer over a word-level vocabulary (<pad>=0, </s>=1, <unk>=2), built in memory."""
    from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    wrapper = HuggingfaceTokenizer.__new__(HuggingfaceTokenizer)  # its __init__ only knows how to download
    wrapper.name, wrapper.seq_len, wrapper.clean = "wanfly-word-tokenizer", seq_len, "whitespace"
    wrapper.tokenizer, wrapper.vocab_size = fast, len(vocab)
    return wrapper


def prompt_words(prompts) -> list[str]:
    """The lower-cased words of some prompts (to extend a world's vocabulary)."""
    return sorted({w for p in prompts for w in re.findall(r"\w+", p.lower())})


def build_world_modules(config: SmallWorldConfig):
    """(dit, vae, text_encoder, tokenizer), randomly initialised from the current torch RNG state."""
    from diffsynth.core.vram.initialization import skip_model_initialization
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import VideoVAE38_, WanVideoVAE38

    dit = WanModel(
        dim=config.dim, num_heads=config.num_heads, num_layers=config.num_layers, ffn_dim=config.ffn_dim,
        in_dim=48, out_dim=48, text_dim=config.text_dim, freq_dim=256, eps=1e-6,
        patch_size=(1, config.patch, config.patch), has_image_input=False, seperated_timestep=True,
        require_clip_embedding=False, require_vae_embedding=False, fuse_vae_embedding_in_latents=True)
    with skip_model_initialization():  # the full-width default VAE would cost 705M parameters
        vae = WanVideoVAE38()
    vae.model = VideoVAE38_(z_dim=48, dim=config.vae_dim, dec_dim=config.vae_dec_dim).eval().requires_grad_(False)
    tokenizer = build_word_tokenizer(config.vocab, config.text_seq_len)
    text_encoder = WanTextEncoder(
        vocab=tokenizer.vocab_size, dim=config.text_dim, dim_attn=config.text_dim, dim_ffn=config.text_ffn_dim,
        num_heads=config.text_heads, num_layers=config.text_layers, num_buckets=32, shared_pos=False, dropout=0.0)
    return dit, vae, text_encoder, tokenizer


def assemble_pipeline(dit, vae, text_encoder, tokenizer, device="cpu", torch_dtype=torch.float32) -> WanActionPipeline:
    pipe = WanActionPipeline(device=device, torch_dtype=torch_dtype)
    pipe.dit = dit.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)
    pipe.vae = vae.to(device=device, dtype=torch_dtype)
    pipe.text_encoder = text_encoder.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)
    pipe.tokenizer = tokenizer
    pipe.height_division_factor = pipe.width_division_factor = dit.patch_size[1] * vae.upsampling_factor
    return pipe


def build_world_pipeline(config: SmallWorldConfig, seed: int = 0, device="cpu", torch_dtype=torch.float32,
                         controller_config: dict | None = None) -> WanActionPipeline:
    """A small world with deterministic random weights (per seed, the global RNG untouched); with
    ``controller_config`` a controller is drawn from the same stream after the modules and attached."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = build_world_modules(config)
        controller = None if controller_config is None else WanActionController.from_config(controller_config)
    pipe = assemble_pipeline(*modules, device=device, torch_dtype=torch_dtype)
    return pipe.set_action_controller(controller) if controller is not None else pipe


# ---- small-world folders (the toy world ships as one) ------------------------------------------------------------
WORLD_CONFIG_NAME = "world_config.json"
WORLD_FORMAT = "wanfly-small-world"
WORLD_WEIGHTS = {"dit": "dit.safetensors", "vae": "vae.safetensors", "text_encoder": "text_encoder.safetensors"}


def save_small_world(folder: str, pipe: WanActionPipeline, config: SmallWorldConfig, extra: dict | None = None) -> None:
    """Write a small world's base weights (DiT, VAE, text encoder) and its config JSON into ``folder``.

    The action controller is saved separately with ``models.artifacts.save_action_artifacts`` (same folder or
    another), so a small world loads through the same artifact code as real weights."""
    os.makedirs(folder, exist_ok=True)
    modules = {"dit": pipe.dit, "vae": pipe.vae.model, "text_encoder": pipe.text_encoder}
    for role, module in modules.items():
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
        save_file(state, os.path.join(folder, WORLD_WEIGHTS[role]))
    with open(os.path.join(folder, WORLD_CONFIG_NAME), "w") as f:
        json.dump({"format": WORLD_FORMAT, "config": config.to_dict(), **(extra or {})}, f, indent=2)


def load_world_weights(folder: str, role: str) -> dict:
    """One part of a world folder's weights (``role`` in WORLD_WEIGHTS: dit, vae, text_encoder) as a state dict."""
    path = os.path.join(folder, WORLD_WEIGHTS[role])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"world folder {folder!r} has no {WORLD_WEIGHTS[role]}")
    return load_file(path)


def load_small_world(folder: str, device="cpu", torch_dtype=torch.float32) -> WanActionPipeline:
    """Rebuild a small world from its folder; attach its action artifacts when the folder holds them."""
    path = os.path.join(folder, WORLD_CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"world folder {folder!r} has no {WORLD_CONFIG_NAME}")
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != WORLD_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r} is not {WORLD_FORMAT!r}")
    config = SmallWorldConfig.from_dict(data["config"])
    missing = [name for name in WORLD_WEIGHTS.values() if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"world folder {folder!r} is missing {missing}")
    dit, vae, text_encoder, tokenizer = build_world_modules(config)
    for role, module in (("dit", dit), ("vae", vae.model), ("text_encoder", text_encoder)):
        try:
            module.load_state_dict(load_file(os.path.join(folder, WORLD_WEIGHTS[role])), strict=True)
        except RuntimeError as error:
            raise ValueError(f"{folder}/{WORLD_WEIGHTS[role]} does not match {WORLD_CONFIG_NAME}: "
                             f"{str(error).splitlines()[0]}") from None
    pipe = assemble_pipeline(dit, vae, text_encoder, tokenizer, device=device, torch_dtype=torch_dtype)
    if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        pipe.load_action_artifacts(folder)
    attach_folder_small_decoder(pipe, folder)
    return pipe


def attach_folder_small_decoder(pipe: WanActionPipeline, folder: str) -> bool:
    """Attach ``folder/small_decoder/`` (``models.frames.small_decoder``) when there is one (the pipeline still
    decodes with its VAE until ``pipe.use_decoder("small")``); True if it did."""
    path = os.path.join(folder, SMALL_DECODER_FOLDER)
    if not os.path.isdir(path):
        return False
    attach_small_decoder(pipe, load_small_decoder(path))
    return True
