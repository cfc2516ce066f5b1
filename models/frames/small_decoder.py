"""The small decoder: Wan2.2 latents -> RGB frames at a few percent of the Wan VAE decoder's cost.

Axis legend: B batch, C channels, F latent frames, T video frames, h/w a level's grid, H/W pixels.

It reads the same normalised latents as the Wan2.2 VAE38 decoder (48 channels; the normalisation of
``WanVideoVAE38.scale``: the DiT's own latents) and makes the same video: 16x the latent grid in space, 4 video
frames per latent frame in time, the first latent frame of a video giving 1 frame (as Wan's decoder does). It is
causal in time with a constant-size memory, so a stream decodes latent frame by latent frame for ever:

    stem      3x3 conv 48 -> widths[0] on each latent frame
    level 0   ``blocks[0]`` memory blocks at the latent grid; their memory is the previous LATENT frame
    grow      a 1x1 conv widths[0] -> 4 x widths[0]: each latent frame becomes 4 video frames (the first: its last)
    level i   nearest 2x upsample, 3x3 conv widths[i-1] -> widths[i], ``blocks[i]`` memory blocks whose memory is
              the previous VIDEO frame
    head      3x3 conv widths[-1] -> 3 * patch^2, pixel shuffle by ``patch``

A memory block is ``x_t + conv(act(conv(act(conv([x_t, x_{t-1}])))))``: a causal temporal kernel of 2 then two
spatial 3x3 convs. ``x_{t-1}`` is the block's INPUT one frame back (zeros before the first frame), so all frames of
a push run in parallel and the only state is the last input frame of each block (``SmallDecoderState``): decoding
latents one at a time or all at once gives the same frames. Weights are stored in float32 safetensors with the
config as JSON beside them (``save_small_decoder`` / ``load_small_decoder``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..config_io import config_from_dict, read_json_file

FORMAT = "wanfly-small-decoder"
CONFIG_FILE = "small_decoder.json"
WEIGHTS_FILE = "small_decoder.safetensors"
FOLDER = "small_decoder"  # a world folder's small decoder lives in <world>/small_decoder/
WAN22_SPATIAL, WAN22_TEMPORAL, WAN22_Z_DIM = 16, 4, 48


@dataclass
class SmallDecoderConfig:
    """Architecture of a small decoder (see the module docstring)."""
    z_dim: int = WAN22_Z_DIM
    widths: list[int] = field(default_factory=lambda: [64, 32, 16, 16])  # channels per level (grid x1, x2, x4, ..)
    blocks: list[int] = field(default_factory=lambda: [2, 1, 1, 1])  # memory blocks per level
    patch: int = 2  # pixel shuffle of the head: spatial = 2 ** (levels - 1) * patch

    def __post_init__(self):
        for name in ("z_dim", "patch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, low in (("widths", 1), ("blocks", 0)):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
                raise ValueError(f"{name} must be a non-empty list of integers >= {low}, got {values!r}")
            setattr(self, name, list(values))
        if len(self.widths) != len(self.blocks):
            raise ValueError(f"widths and blocks need one entry per level, got {len(self.widths)} and "
                             f"{len(self.blocks)}")
        if self.spatial != WAN22_SPATIAL:
            raise ValueError(f"widths/patch: 2 ** (levels - 1) * patch must be {WAN22_SPATIAL} (Wan2.2's spatial "
                             f"compression), got {self.spatial} ({len(self.widths)} levels, patch {self.patch})")

    @property
    def spatial(self) -> int:
        return 2 ** (len(self.widths) - 1) * self.patch

    @property
    def temporal(self) -> int:
        return WAN22_TEMPORAL

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# "full": for the 5B model's latents (480x832, 704x1280); "toy": for the toy world (128x128, a 16-wide teacher).
PRESETS = {"full": SmallDecoderConfig(widths=[256, 128, 64, 32], blocks=[3, 2, 1, 1]),
           "toy": SmallDecoderConfig(widths=[64, 32, 16, 8], blocks=[2, 1, 1, 0])}


class MemoryBlock(torch.nn.Module):
    """``x_t + f([x_t, x_{t-1}])`` on (B, T, C, h, w); the memory is the previous frame's input."""

    def __init__(self, channels: int):
        super().__init__()
        self.mix = torch.nn.Conv2d(2 * channels, channels, 3, padding=1)  # the causal temporal kernel of 2
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C, h, w), past (B, 1, C, h, w) -> (B, T, C, h, w), the new past (B, 1, C, h, w)."""
        previous = torch.cat([past, x[:, :-1]], 1)  # (B, T, C, h, w): each frame's input one frame back
        y = torch.cat([x, previous], 2).flatten(0, 1)  # (B*T, 2C, h, w)
        y = self.conv2(F.relu(self.conv1(F.relu(self.mix(y)))))  # (B*T, C, h, w)
        return x + y.view_as(x), x[:, -1:]


@dataclass
class SmallDecoderState:
    """A stream's memory: the last input frame of every memory block, and whether frame 0 was made."""
    pasts: list  # (B, 1, C, h, w) per memory block, in order
    started: bool = False

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.pasts)


class SmallDecoder(torch.nn.Module):
    """See the module docstring. ``forward(z, state) -> (video, state)``."""

    def __init__(self, config: SmallDecoderConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = torch.nn.Conv2d(config.z_dim, w[0], 3, padding=1)
        self.grow = torch.nn.Conv2d(w[0], config.temporal * w[0], 1)
        self.ups = torch.nn.ModuleList(torch.nn.Conv2d(w[i - 1], w[i], 3, padding=1) for i in range(1, len(w)))
        self.levels = torch.nn.ModuleList(
            torch.nn.ModuleList(MemoryBlock(c) for _ in range(n)) for c, n in zip(w, config.blocks))
        self.head = torch.nn.Conv2d(w[-1], 3 * config.patch ** 2, 3, padding=1)

    def initial_state(self, batch: int, h: int, w: int, device=None, dtype=None) -> SmallDecoderState:
        """Zero memory for latents of an (h, w) grid."""
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        pasts = [torch.zeros(batch, 1, c, h * 2 ** i, w * 2 ** i, device=device, dtype=dtype)
                 for i, (c, n) in enumerate(zip(self.config.widths, self.config.blocks)) for _ in range(n)]
        return SmallDecoderState(pasts)

    def forward(self, z: torch.Tensor, state: Optional[SmallDecoderState] = None
                ) -> tuple[torch.Tensor, SmallDecoderState]:
        """Normalised latents z (B, z_dim, F, h, w) -> video (B, 3, T, 16h, 16w), unclamped, and the state after
        them. T = 4F, or 4F - 3 when the state has not made frame 0 yet (a new video)."""
        B, C, Fl, h, w = z.shape
        if C != self.config.z_dim:
            raise ValueError(f"latents: expected {self.config.z_dim} channels, got {C}")
        state = state or self.initial_state(B, h, w, z.device, z.dtype)
        pasts, k = list(state.pasts), 0
        x = z.transpose(1, 2).flatten(0, 1)  # (B*F, C, h, w)
        x = F.relu(self.stem(x)).view(B, Fl, -1, h, w)  # (B, F, C0, h, w)
        for level, blocks in enumerate(self.levels):
            if level == 1:  # each latent frame -> 4 video frames
                x = self.grow(x.flatten(0, 1)).view(B, Fl * self.config.temporal, -1, h, w)  # (B, 4F, C0, h, w)
                if not state.started:
                    x = x[:, self.config.temporal - 1:]  # the first latent frame gives its last frame only
            if level >= 1:
                T = x.shape[1]
                x = F.interpolate(x.flatten(0, 1), scale_factor=2, mode="nearest")  # (B*T, C, 2h, 2w)
                x = F.relu(self.ups[level - 1](x))
                h, w = x.shape[-2:]
                x = x.view(B, T, -1, h, w)  # (B, T, C_level, h, w)
            for block in blocks:
                x, pasts[k] = block(x, pasts[k])
                k += 1
        T = x.shape[1]
        y = self.head(F.relu(x.flatten(0, 1)))  # (B*T, 3*p*p, h, w)
        y = F.pixel_shuffle(y, self.config.patch).view(B, T, 3, h * self.config.patch, w * self.config.patch)
        return y.transpose(1, 2), SmallDecoderState(pasts, started=True)  # (B, 3, T, H, W)


class SmallStreamDecoder:
    """The small decoder behind ``models.streaming.StreamDecoder``'s interface: ``push`` latent frames as they
    come, get their pixels; the memory (``nbytes``) is constant, however long the stream."""

    def __init__(self, decoder: SmallDecoder, device=None):
        self.decoder, self.state = decoder, None
        p = next(decoder.parameters())
        self.device, self.dtype = device or p.device, p.dtype

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, n, h, w) -> (B, 3, frames, H, W) in [-1, 1] (the first latent frame ever gives 1 frame, others 4)."""
        video, self.state = self.decoder(latents.to(self.device, self.dtype), self.state)
        return video.clamp_(-1, 1)

    @property
    def nbytes(self) -> int:
        return 0 if self.state is None else self.state.nbytes


def decode_video(decoder: SmallDecoder, latents: torch.Tensor) -> torch.Tensor:
    """A whole video at once, as ``WanVideoVAE.decode`` returns it: (B, C, F, h, w) -> (B, 3, T, H, W) in [-1, 1]."""
    return SmallStreamDecoder(decoder).push(latents)


# ---- the folder: config JSON + safetensors ------------------------------------------------------------------
def save_small_decoder(folder: str, decoder: SmallDecoder, extra: Optional[dict] = None) -> None:
    """Write ``small_decoder.json`` ({"format", "config", ...extra}) and ``small_decoder.safetensors`` (float32)."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in decoder.state_dict().items()}
    save_file(state, os.path.join(folder, WEIGHTS_FILE))
    with open(os.path.join(folder, CONFIG_FILE), "w") as handle:
        json.dump({"format": FORMAT, "config": decoder.config.to_dict(), **(extra or {})}, handle, indent=2)
        handle.write("\n")


def read_small_decoder_json(folder: str) -> dict:
    """The folder's ``small_decoder.json``, checked (format, config fields); ValueError / FileNotFoundError naming
    the file."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"small decoder folder {folder!r} has no {CONFIG_FILE}")
    data = read_json_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format') if isinstance(data, dict) else None!r} is not "
                         f"{FORMAT!r}")
    if not isinstance(data.get("config"), dict):
        raise ValueError(f"{path}: missing the 'config' object")
    try:
        data["config"] = config_from_dict(SmallDecoderConfig, data["config"], f"{path}: config")
    except (TypeError, ValueError) as error:
        message = str(error)
        raise ValueError(message if message.startswith(path) else f"{path}: config: {message}") from None
    return data


def load_small_decoder(folder: str, device="cpu", dtype=torch.float32) -> SmallDecoder:
    """Rebuild a small decoder from its folder; weights that do not match the JSON's config are a ValueError."""
    config = read_small_decoder_json(folder)["config"]
    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"small decoder folder {folder!r} has no {WEIGHTS_FILE}")
    decoder = SmallDecoder(config)
    try:
        decoder.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as error:
        raise ValueError(f"{weights} does not match {CONFIG_FILE}: {str(error).splitlines()[0]}") from None
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
