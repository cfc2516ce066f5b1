"""Server settings: one dataclass, filled from defaults < environment (``WANFLY_<NAME>``) < command line.

Every field is a command-line option of ``python -m server`` with the same name (``--max_sessions 4``) and an
environment variable (``WANFLY_MAX_SESSIONS=4``); lists are comma-separated, booleans accept 1/0/true/false.
Fields left at ``None`` take the world's defaults (see ``server.generation.worlds``). ``--preset realtime`` fills the
generation fields from ``PRESETS`` (explicit options still win); docs/performance.md gives its measurements.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from models.options import check_action_guidance, check_action_guidance_rescale, check_decoder
from models.serve_config import GENERATIONS
from server.generation.affinity import parse_cores
from server.media.images import check_jpeg_device

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
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0: every interface)
    port: int = 8000  # port to listen on; one already in use stops the command before anything loads
    world: str = "auto"  # "auto" (toy if shipped, else random), "random" (tiny preset), "toy", a name or a folder
    model_dir: Optional[str] = None  # original Wan2.2-TI2V-5B folder (overrides --world)
    artifacts: Optional[str] = None  # training output folder (action_train_config.json, controller, LoRA)
    device: str = "auto"  # auto = cuda when available for real weights, else cpu
    dtype: str = "auto"  # auto = bfloat16 on cuda, float32 on cpu
    world_seed: int = 0  # seed of the random world's weights
    threads: int = 0  # torch CPU threads (0 = all cores but one on CPU, torch's default on GPU)
    cpu_cores: Optional[str] = None  # run the generation worker and its torch threads on these cores ("0-3", "0,2";
    #   Linux; unset = any core); python -m server.cluster gives each CPU replica its own (--pin_cores)
    # generation (unset = the world's default)
    height: Optional[int] = None  # video height in pixels (a multiple of 32)
    width: Optional[int] = None  # video width in pixels (a multiple of 32)
    chunk_frames: Optional[int] = None  # 4k+1 frames per flight chunk
    fps: Optional[int] = None  # frames per second of the video
    steps: Optional[int] = None  # denoising steps per chunk or block
    cfg_scale: Optional[float] = None  # text classifier-free guidance (1 = off: one DiT pass per step)
    action_guidance: Optional[float] = None  # >= 1: amplify what the actions change (1 = off)
    action_guidance_rescale: Optional[float] = None  # 0..1: keep guided steps' contrast (0 = off)
    generation: Optional[str] = None  # "chunked" or "causal" (one block-causal stream per flight, models.stream)
    block_frames: Optional[int] = None  # causal: latent frames per block (4 video frames each)
    window: Optional[int] = None  # causal: latent frames of context besides the sink
    sink: Optional[bool] = None  # causal: the first image stays in context
    max_steps: int = 50  # the most denoising steps a client may ask for
    preset: Optional[str] = None  # "realtime" (PRESETS: 480x832, 17-frame chunks, 4 steps, CFG off) fills the
    #   generation options left unset
    # speed
    compile: bool = False  # torch.compile the DiT blocks and the controller; compiled during the warm-up
    decoder: Optional[str] = None  # "wan" (the world's VAE decoder) | "small" (its distilled one); None = serve.json
    decode_device: Optional[str] = None  # decode on another device, e.g. cuda:1 (None = the world's device)
    decode_overlap: Optional[bool] = None  # causal: a block decodes on its own lane (a second CUDA stream, or the
    #   decode device) while the worker makes the next block; unset = on when the world or --decode_device is CUDA
    jpeg_device: str = "auto"  # JPEG encoding: auto = the world's GPU when it runs on one, else cpu (simplejpeg)
    fp8: bool = False  # FP8 weights and activations in the DiT's linear layers (H100-class GPUs; models.fp8)
    # capacity
    max_sessions: Optional[int] = None  # flights generating at once (round-robin, one chunk or block each in
    #   turn); unset: 4 for chunked worlds, from the measured per-stream memory for causal ones
    max_waiting: int = 8  # flights waiting for a turn; beyond: WebSocket close 1013
    max_jobs: int = 4  # REST/gradio jobs waiting; beyond: HTTP 429
    max_job_frames: int = 81  # the longest REST/gradio job in frames
    jobs_kept: int = 32  # finished jobs whose video stays downloadable
    # security and limits
    token: Optional[str] = None  # shared token for REST, WebSocket, recordings and gradio (unset = open)
    allowed_origins: list[str] = field(default_factory=list)  # browser Origins besides the server's own (WebSocket,
    #   REST writes); "*" = any
    allowed_hosts: list[str] = field(default_factory=list)  # Host names besides localhost, --host and IP addresses
    #   (DNS rebinding, server.guard); "*" = any
    max_upload_bytes: int = 8 * 1024 * 1024  # the largest uploaded first frame in bytes (decoded)
    max_image_pixels: int = 4096 * 4096  # the largest first frame in pixels (width x height)
    max_message_bytes: int = 16 * 1024  # WebSocket messages other than "start"
    max_prompt_chars: int = 2000  # the longest prompt in characters
    max_messages_per_s: float = 200.0  # WebSocket messages per connection (bursts of 2 s worth); beyond: dropped,
    #   then closed (1008) if it goes on (server.guard.MessageLimit)
    # streaming
    block_margin_s: float = 0.1  # causal: a flight's next block starts when its client has the measured block
    #   time plus this much playback left (server.generation.streams.Pacer): larger = fewer stalls, smaller =
    #   keys show sooner
    send_queue_frames: int = 48  # frames buffered per connection; older ones are dropped beyond it
    send_timeout_s: float = 10.0  # a send blocked this long closes the connection
    idle_timeout_s: float = 120.0  # no message for this long closes the connection
    client_timeout_s: float = 5.0  # a flight pauses (no more chunks) while its client shows no sign of playing for
    #   this long: its reported playback position stuck with frames unplayed, or (clients that never report it) no
    #   message at all; 0 = never
    jpeg_quality: int = 85  # JPEG quality of the frames sent to browsers (1..100)
    # recordings, UI
    recordings_dir: Optional[str] = None  # where flight recordings go (unset = a temporary folder)
    recordings_kept: int = 16  # finished flight recordings kept; older ones are deleted
    max_recording_frames: int = 24 * 600  # a longer flight's recording stops here (the flight goes on)
    web_dir: str = str(REPO_ROOT / "web")  # the browser UI's folder (and its samples/)
    gradio: bool = True  # serve the gradio page at /gradio
    log_level: str = "info"  # debug, info, warning or error

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0: any free port), got {self.port}")
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
        parse_cores(self.cpu_cores)
        if self.decoder is not None:
            check_decoder(self.decoder)
        check_jpeg_device(self.jpeg_device)
        if self.decode_device is not None and not re.fullmatch(r"(cpu|cuda(:\d+)?)", str(self.decode_device)):
            raise ValueError(f"decode_device must be cpu, cuda or cuda:N, got {self.decode_device!r}")
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

    def to_env(self) -> dict[str, Optional[str]]:
        """Every field as its ``WANFLY_<NAME>`` variable's text (None: unset, the field is None), so that
        ``Settings.from_args([], env=...)`` gives these settings back: how ``python -m server`` hands the settings
        it checked to the app factory uvicorn imports (``server.app.app_from_env``)."""
        return {ENV_PREFIX + f.name.upper(): _text(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_args(cls, argv=None, env=None, error=None, parser=None) -> "Settings":
        """Settings from the command line and WANFLY_* variables; a bad value exits 2 through ``error`` (default:
        this parser's ``error``; a command that forwards options passes its own, so the message names it).
        ``parser``: ``build_parser()`` with more options (``python -m server.cluster``), left to the caller."""
        parser = parser or build_parser()
        namespace = parser.parse_args(argv)
        values = _from_env(os.environ if env is None else env)
        names = {f.name for f in dataclasses.fields(cls)}
        values.update({k: v for k, v in vars(namespace).items() if v is not None and k in names})
        try:
            return cls(**values)
        except ValueError as bad:
            (error or parser.error)(str(bad))


def _field_type(f: dataclasses.Field):
    hint = typing.get_type_hints(Settings)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args and typing.get_origin(hint) is typing.Union else hint


def switch_value(text: str) -> Optional[bool]:
    """A switch's text read as the command line reads it: 1/true/yes/on, 0/false/no/off (any case); else None."""
    return {"1": True, "true": True, "yes": True, "on": True,
            "0": False, "false": False, "no": False, "off": False}.get(str(text).lower())


def _convert(f: dataclasses.Field, text: str):
    kind = _field_type(f)
    if kind is bool:
        value = switch_value(text)
        if value is None:
            raise ValueError(f"{f.name}: expected a boolean, got {text!r}")
        return value
    if typing.get_origin(kind) is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    return kind(text)


def _text(value) -> Optional[str]:
    """A field's value as ``_convert`` reads it back."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)  # str(float) is the shortest text that reads back to the same float


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


def field_help() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each field's help and the fields of each group, read from the comments of the ``Settings`` class above: the
    one source of both ``--help`` texts. A field's help is its trailing comment plus the comment lines under it that
    are indented past the ``#`` (``#   more``); any other comment line on its own starts a group."""
    helps: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    group, last = "options", None
    names = {f.name for f in dataclasses.fields(Settings)}
    for line in inspect.getsource(Settings).splitlines()[1:]:
        text = line.strip()
        if text.startswith("def "):
            break
        if text.startswith("#"):
            comment = text[1:]
            if comment.startswith("  ") and last is not None:
                helps[last] += " " + comment.strip()
            else:
                group, last = comment.strip(), None
            continue
        name = text.split(":", 1)[0]
        if name in names:
            last = name
            helps[name] = text.split("  # ", 1)[1].strip() if "  # " in text else ""
            groups.setdefault(group, []).append(name)
    return helps, groups


class _Value:
    """An argparse ``type`` converting like the environment does; a bad value names the option and what it wants."""

    def __init__(self, f: dataclasses.Field):
        self.field = f
        self.__name__ = _metavar(f).lower()

    def __call__(self, text: str):
        try:
            return _convert(self.field, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_metavar(self.field).lower()}, got {text!r}") from None


def _metavar(f: dataclasses.Field) -> str:
    kind = _field_type(f)
    if kind is bool:
        return "BOOL"
    if typing.get_origin(kind) is list:
        return "A,B,..."
    return {int: "INT", float: "NUMBER"}.get(kind, "TEXT")


def add_settings_arguments(parser: argparse.ArgumentParser, names=None, titles: dict = None) -> None:
    """Add the ``Settings`` fields (all, or ``names``) as options, grouped and described as the class is (a group's
    title renamed by ``titles``)."""
    helps, groups = field_help()
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for title, members in groups.items():
        chosen = [name for name in members if names is None or name in names]
        if not chosen:
            continue
        group = parser.add_argument_group((titles or {}).get(title, title))
        for name in chosen:
            f = fields[name]
            flag = {"nargs": "?", "const": True} if _field_type(f) is bool else {}  # "--compile" alone means true
            group.add_argument(f"--{name}", dest=name, default=None, metavar=_metavar(f), type=_Value(f),
                               help=_help(f, helps[name]), **flag)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server", usage="python -m server [--option VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="wanfly: real-time drone flight through a generated world, served to a browser.\n\n"
                    "With no options it serves the toy world (worlds/toy) on the CPU at http://127.0.0.1:8000/.",
        epilog=f"Every option is also an environment variable {ENV_PREFIX}<OPTION> in upper case "
               f"({ENV_PREFIX}MAX_SESSIONS=4); the command line wins.\n"
               "Lists are comma-separated; booleans are 1/0/true/false (a boolean option alone means true).\n\n"
               "examples:\n"
               "  python -m server --world random                         the tiny random-weight preset (fastest)\n"
               "  python -m server --model_dir /weights/Wan2.2-TI2V-5B --artifacts outputs/run1 \\\n"
               "      --preset realtime --compile --host 0.0.0.0         the real model on a GPU, in real time")
    add_settings_arguments(parser)
    return parser


def _help(f: dataclasses.Field, text: str) -> str:
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if default is None or default == []:
        return text
    shown = ("1" if default else "0") if isinstance(default, bool) else default
    return f"{text} (default: {shown})"
