"""Server settings: one dataclass, filled from defaults < environment (``WANFLY_<NAME>``) < command line.

Every field is a command-line option of ``python -m server`` with the same name (``--max_sessions 4``) and an
environment variable (``WANFLY_MAX_SESSIONS=4``); lists are comma-separated, booleans accept 1/0/true/false.
Fields left at ``None`` take the world's defaults (see ``server.generation.worlds``). ``--preset realtime`` fills the
generation fields from ``PRESETS`` (explicit options still win); docs/performance.md gives its measurements.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from models.options import check_action_guidance, check_action_guidance_rescale
from models.serve_config import GENERATIONS

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "WANFLY_"

# Named generation presets, the one place they are defined. "realtime": few steps, CFG off (one DiT pass per
# step instead of two) and short chunks (17 frames = 16 new frames, 0.67 s of video at 24 fps), chosen from
# bench/chunk_latency.py; see docs/performance.md for the numbers behind it.
PRESETS: dict[str, dict] = {
    "realtime": {"height": 480, "width": 832, "chunk_frames": 17, "fps": 24, "steps": 4, "cfg_scale": 1.0},
}
DEFAULT_MAX_SESSIONS = 4  # chunked worlds, when --max_sessions is not given
MAX_SESSIONS_CAP = 8  # causal worlds: the most flights the memory-derived default admits


@dataclass
class Settings:
    # where and what to serve
    host: str = "127.0.0.1"
    port: int = 8000
    world: str = "auto"  # "auto" (toy if shipped, else random), "random" (tiny preset), "toy", a name or a folder
    model_dir: Optional[str] = None  # original Wan2.2-TI2V-5B folder (overrides --world)
    artifacts: Optional[str] = None  # training output folder (action_train_config.json, controller, LoRA)
    device: str = "auto"  # auto = cuda when available for real weights, else cpu
    dtype: str = "auto"  # auto = bfloat16 on cuda, float32 on cpu
    world_seed: int = 0  # seed of the random world's weights
    threads: int = 0  # torch CPU threads (0 = all cores but one on CPU, torch's default on GPU)
    # generation (None = the world's default)
    height: Optional[int] = None
    width: Optional[int] = None
    chunk_frames: Optional[int] = None  # 4k+1 frames per flight chunk
    fps: Optional[int] = None
    steps: Optional[int] = None
    cfg_scale: Optional[float] = None
    action_guidance: Optional[float] = None  # >= 1: amplify what the actions change (1 = off)
    action_guidance_rescale: Optional[float] = None  # 0..1: keep guided steps' contrast (0 = off)
    generation: Optional[str] = None  # "chunked" | "causal" (one block-causal stream per flight, models.stream)
    block_frames: Optional[int] = None  # causal: latent frames per block (4 video frames each)
    window: Optional[int] = None  # causal: latent frames of context besides the sink
    sink: Optional[bool] = None  # causal: the first image stays in context
    max_steps: int = 50
    preset: Optional[str] = None  # a name in PRESETS: fills the generation fields above that are left at None
    # speed
    compile: bool = False  # torch.compile the DiT blocks and the controller; compiled during the warm-up
    # capacity
    max_sessions: Optional[int] = None  # flights generating at once (round-robin, one chunk or block each in
    # turn); None: 4 for chunked worlds, from the measured per-stream memory for causal ones (server.generation.streams)
    max_waiting: int = 8  # flights waiting for a turn; beyond: WebSocket close 1013
    max_jobs: int = 4  # REST/gradio jobs waiting; beyond: HTTP 429
    max_job_frames: int = 81
    jobs_kept: int = 32  # finished jobs whose video stays downloadable
    # security and limits
    token: Optional[str] = None  # shared token for REST, WebSocket, recordings and gradio (None = open)
    allowed_origins: list[str] = field(default_factory=list)  # browser Origins besides the server's own (WebSocket,
    # REST writes); "*" = any
    allowed_hosts: list[str] = field(default_factory=list)  # Host names besides localhost, --host and IP addresses
    # (DNS rebinding, server.guard); "*" = any
    max_upload_bytes: int = 8 * 1024 * 1024  # decoded image bytes
    max_image_pixels: int = 4096 * 4096
    max_message_bytes: int = 16 * 1024  # WebSocket messages other than "start"
    max_prompt_chars: int = 2000
    max_messages_per_s: float = 200.0  # WebSocket messages per connection (bursts of 2 s worth); beyond: dropped,
    # then closed (1008) if it goes on (server.guard.MessageLimit)
    # streaming
    block_margin_s: float = 0.1  # causal: a flight's next block starts when its client has the measured block
    # time plus this much playback left (server.generation.streams.Pacer): larger = fewer stalls, smaller = keys
    # show sooner
    send_queue_frames: int = 48  # frames buffered per connection; older ones are dropped beyond it
    send_timeout_s: float = 10.0  # a send blocked this long closes the connection
    idle_timeout_s: float = 120.0  # no message for this long closes the connection
    client_timeout_s: float = 5.0  # a flight pauses (no more chunks) while its client shows no sign of playing for
    # this long: its reported playback position stuck with frames unplayed, or (clients that never report it) no
    # message at all; 0 = never
    jpeg_quality: int = 85
    # recordings, UI
    recordings_dir: Optional[str] = None  # None = a temporary folder
    recordings_kept: int = 16
    max_recording_frames: int = 24 * 600
    web_dir: str = str(REPO_ROOT / "web")
    gradio: bool = True
    log_level: str = "info"

    def __post_init__(self):
        for name in ("max_steps", "max_job_frames", "send_queue_frames", "max_message_bytes",
                     "max_upload_bytes", "max_prompt_chars", "jobs_kept", "recordings_kept"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.generation is not None and self.generation not in GENERATIONS:
            raise ValueError(f"generation must be one of {list(GENERATIONS)}, got {self.generation!r}")
        for name, low in (("block_frames", 1), ("window", 0)):
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)}")
        if not self.max_messages_per_s > 0:
            raise ValueError(f"max_messages_per_s must be > 0, got {self.max_messages_per_s}")
        if not 0 <= self.client_timeout_s <= 3600:
            raise ValueError(f"client_timeout_s must be in 0..3600 seconds, got {self.client_timeout_s}")
        if not 0 <= self.block_margin_s <= 10:
            raise ValueError(f"block_margin_s must be in 0..10 seconds, got {self.block_margin_s}")
        for name in ("max_waiting", "max_jobs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.action_guidance is not None or self.action_guidance_rescale is not None:
            if self.action_guidance is not None:
                check_action_guidance(self.action_guidance)
            if self.action_guidance_rescale is not None:
                check_action_guidance_rescale(self.action_guidance_rescale)
        if self.token == "":
            self.token = None
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"preset: unknown {self.preset!r}; expected one of {sorted(PRESETS)}")
            for name, value in PRESETS[self.preset].items():
                if getattr(self, name) is None:
                    setattr(self, name, value)

    @property
    def ws_max_size(self) -> int:
        """uvicorn's WebSocket message cap: a start message carrying the largest allowed image as a data URL."""
        return self.max_upload_bytes * 4 // 3 + self.max_prompt_chars * 4 + 64 * 1024

    @classmethod
    def from_args(cls, argv=None, env=None, error=None) -> "Settings":
        """Settings from the command line and WANFLY_* variables; a bad value exits 2 through ``error`` (default:
        this parser's ``error``; a command that forwards options passes its own, so the message names it)."""
        parser = build_parser()
        namespace = parser.parse_args(argv)
        values = _from_env(os.environ if env is None else env)
        values.update({k: v for k, v in vars(namespace).items() if v is not None})
        try:
            return cls(**values)
        except ValueError as bad:
            (error or parser.error)(str(bad))


def _field_type(f: dataclasses.Field):
    hint = typing.get_type_hints(Settings)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args and typing.get_origin(hint) is typing.Union else hint


def _convert(f: dataclasses.Field, text: str):
    kind = _field_type(f)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.name}: expected a boolean, got {text!r}")
    if typing.get_origin(kind) is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    return kind(text)


def _from_env(env) -> dict:
    values = {}
    for f in dataclasses.fields(Settings):
        text = env.get(ENV_PREFIX + f.name.upper())
        if text is not None:
            try:
                values[f.name] = _convert(f, text)
            except ValueError as error:
                raise SystemExit(f"{ENV_PREFIX}{f.name.upper()}: {error}") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server", description="wanfly: real-time drone flight through a generated world",
        epilog=f"Every option can also be set as an environment variable {ENV_PREFIX}<OPTION> (upper case).")
    for f in dataclasses.fields(Settings):
        flag = {"nargs": "?", "const": True} if _field_type(f) is bool else {}  # "--compile" alone means true
        parser.add_argument(f"--{f.name}", dest=f.name, default=None, metavar=f.name.upper(),
                            type=lambda text, f=f: _convert(f, text), help=_help(f), **flag)
    return parser


def _help(f: dataclasses.Field) -> str:
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return f"default: {default!r}"
