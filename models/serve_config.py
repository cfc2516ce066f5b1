"""``serve.json``: how a world is served (size, chunk, steps, guidance, first frame, banner, notes, decoder): its one
owner.

A world folder (``models.small_world``) may hold a ``serve.json``; every reader (the server's worlds, evaluation,
rollouts, the demo's samples) goes through ``load_serve_config`` and every writer (the toy-world recipe) through
``save_serve_config``. Fields left out of the file take the defaults below; an unknown field or a bad value is a
ValueError naming the file and the field.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

from .config_io import config_from_dict, read_json_file
from .options import CausalSettings, check_action_guidance, check_action_guidance_rescale, check_decoder

SERVE_CONFIG_NAME = "serve.json"
SAMPLE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
GENERATIONS = ("chunked", "causal")
DEFAULT_PROMPT = "a drone flies over green hills under a blue sky"


@dataclass
class ServeConfig:
    height: int = 128
    width: int = 128
    chunk_frames: int = 9  # 4k+1 frames per flight chunk
    fps: int = 16
    steps: int = 4
    cfg_scale: float = 1.0
    action_guidance: float = 1.0  # hover + g * (commanded - hover) per step (models.model_fn); 1 = off
    action_guidance_rescale: float = 0.0  # pull the guided step back to the commanded one's std; 0 = off
    prompt: str = DEFAULT_PROMPT
    sample: Optional[str] = None  # the bundled first frame the UI offers first (web/samples/<name>.png)
    weights: Optional[str] = None  # one line for the UI banner (None: the reader names the world)
    notes: Optional[str] = None  # what a person should expect from this world (the page shows it; None: nothing)
    autoregressive: bool = False  # trained on chunk-length clips: longer videos are made chunk by chunk
    # "chunked": every chunk a TI2V generation from the previous chunk's last frame (the seed's way);
    # "causal": one block-causal stream per flight (models.stream), with these block/window settings
    generation: str = "chunked"
    block_frames: int = 1  # latent frames per block (4 video frames each)
    window: int = 3  # latent frames of context besides the sink
    sink: bool = True  # the first image stays in context
    # which decoder makes the frames: "wan" (the world's VAE decoder) or "small" (its distilled one, in the
    # folder's small_decoder/: models.frames.small_decoder); python -m server --decoder overrides it
    decoder: str = "wan"

    def __post_init__(self):
        for name in ("height", "width", "chunk_frames", "fps", "steps"):
            _positive_int(name, getattr(self, name))
        if self.height % 32 or self.width % 32:
            raise ValueError(f"height and width must be multiples of 32, got {self.height}x{self.width}")
        if self.chunk_frames < 5 or self.chunk_frames % 4 != 1:
            raise ValueError(f"chunk_frames must be 4k+1 with k >= 1 (5, 9, 13, ...), got {self.chunk_frames}")
        if self.fps > 120:
            raise ValueError(f"fps must be in 1..120, got {self.fps}")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) \
                or not math.isfinite(self.cfg_scale) or self.cfg_scale < 1:
            raise ValueError(f"cfg_scale must be a number >= 1 (1 = off), got {self.cfg_scale!r}")
        self.cfg_scale = float(self.cfg_scale)
        self.action_guidance = check_action_guidance(self.action_guidance)
        self.action_guidance_rescale = check_action_guidance_rescale(self.action_guidance_rescale)
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {self.prompt!r}")
        if self.sample is not None and (not isinstance(self.sample, str) or not self.sample
                                        or set(self.sample) - SAMPLE_NAME_CHARS):
            raise ValueError(f"sample must be a bundled sample name (a-z, 0-9, _ and -), got {self.sample!r}")
        if self.weights is not None and not isinstance(self.weights, str):
            raise ValueError(f"weights must be a string (the banner line), got {self.weights!r}")
        if self.notes is not None and not isinstance(self.notes, str):
            raise ValueError(f"notes must be a string (what to expect from the world), got {self.notes!r}")
        if not isinstance(self.autoregressive, bool):
            raise ValueError(f"autoregressive must be true or false, got {self.autoregressive!r}")
        if self.generation not in GENERATIONS:
            raise ValueError(f"generation must be one of {list(GENERATIONS)}, got {self.generation!r}")
        self.causal_settings()  # block_frames, window, sink checked by name
        check_decoder(self.decoder)

    def causal_settings(self) -> CausalSettings:
        return CausalSettings(block_frames=self.block_frames, window=self.window, sink=self.sink)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def serve_config_from_dict(data: dict, source: str = SERVE_CONFIG_NAME) -> ServeConfig:
    """A ServeConfig from parsed JSON; ValueError naming ``source`` and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    try:
        return config_from_dict(ServeConfig, data, source)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(source) else f"{source}: {message}") from None


def load_serve_config(folder: str) -> Optional[ServeConfig]:
    """The folder's ``serve.json``, or None when it has none."""
    path = os.path.join(folder, SERVE_CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    return serve_config_from_dict(read_json_file(path), path)


def save_serve_config(folder: str, config: ServeConfig) -> str:
    """Write ``folder/serve.json`` atomically (a temp file renamed into place); returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, SERVE_CONFIG_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(config.to_dict(), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)
    return path
