"""Validation of the client's WebSocket messages (the server side of ``docs/protocol.md``).

``parse_client_message`` turns one received frame into a message dataclass or raises ``ProtocolError`` with a
code and a message naming the bad field. Nothing reaches the engine without passing through here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional, Union

from models.action_format import NUM_ACTIONS

MAX_SEED = 2**31 - 1
MAX_SEQ = 2**53
MAX_T_MS = 1e13
SAMPLE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_message(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


@dataclass
class Start:
    prompt: str
    image: Optional[str]  # data URL, or None for a bundled sample
    sample: Optional[str]
    seed: Optional[int]
    steps: Optional[int]


@dataclass
class Input:
    seq: int
    t: float
    flags: list
    mags: list


@dataclass
class Stop:
    pass


@dataclass
class Ping:
    pass


Message = Union[Start, Input, Stop, Ping]


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def _int(data: dict, key: str, low: int, high: int, required: bool = True) -> Optional[int]:
    value = data.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("bad_field", f"{key}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ProtocolError("bad_field", f"{key}: must be in {low}..{high}, got {value}")
    return value


def _vector(data: dict, key: str, kind: str) -> list:
    value = data.get(key)
    if not isinstance(value, list) or len(value) != NUM_ACTIONS:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise ProtocolError("bad_field", f"{key}: expected a list of {NUM_ACTIONS} numbers, got {got}")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ProtocolError("bad_field", f"{key}[{i}]: expected a finite number, got {item!r}")
        if kind == "flag" and item not in (0, 1):
            raise ProtocolError("bad_field", f"{key}[{i}]: must be 0 or 1, got {item!r}")
        if kind == "unit" and not 0.0 <= item <= 1.0:
            raise ProtocolError("bad_field", f"{key}[{i}]: must be in 0..1, got {item!r}")
    return [int(v) for v in value] if kind == "flag" else [float(v) for v in value]


def parse_client_message(raw, max_bytes: int, max_start_bytes: int, max_prompt_chars: int, max_steps: int) -> Message:
    """One WebSocket frame (str or bytes) -> a validated message. ``start`` may be up to ``max_start_bytes``
    (it carries the image); every other message up to ``max_bytes``."""
    if raw is None or isinstance(raw, (bytes, bytearray)):
        raise ProtocolError("bad_message", "binary messages are not accepted from clients; send JSON text")
    size = len(raw) if len(raw) > max_start_bytes else len(raw.encode("utf-8", "replace"))
    if size > max_start_bytes:
        raise ProtocolError("oversized", f"message of {size} bytes exceeds the limit of {max_start_bytes}")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as error:
        raise ProtocolError("bad_json", f"not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind != "start" and size > max_bytes:
        raise ProtocolError("oversized", f"{kind!r} message of {size} bytes exceeds the limit of {max_bytes}")
    if kind == "input":
        seq = _int(data, "seq", 0, MAX_SEQ)
        t = data.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= MAX_T_MS:
            raise ProtocolError("bad_field", f"t: expected a finite time in ms >= 0, got {t!r}")
        return Input(seq=seq, t=float(t), flags=_vector(data, "flags", "flag"), mags=_vector(data, "mags", "unit"))
    if kind == "start":
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise ProtocolError("bad_field", f"prompt: expected a string, got {type(prompt).__name__}")
        if len(prompt) > max_prompt_chars:
            raise ProtocolError("bad_field", f"prompt: {len(prompt)} characters, more than {max_prompt_chars}")
        image = data.get("image")
        if image is not None and (not isinstance(image, str) or not image.startswith("data:image/")):
            raise ProtocolError("bad_field", "image: expected a data URL (data:image/png;base64,...) or null")
        sample = data.get("sample")
        if sample is not None and (not isinstance(sample, str) or not sample or len(sample) > 64
                                   or set(sample) - SAMPLE_NAME_CHARS):
            raise ProtocolError("bad_field", f"sample: expected a bundled sample name, got {sample!r}")
        return Start(prompt=prompt, image=image, sample=sample, seed=_int(data, "seed", 0, MAX_SEED, required=False),
                     steps=_int(data, "steps", 1, max_steps, required=False))
    if kind == "stop":
        return Stop()
    if kind == "ping":
        return Ping()
    if kind is None:
        raise ProtocolError("unknown_type", "missing 'type'")
    raise ProtocolError("unknown_type", f"unknown type {str(kind)[:40]!r}; expected start, input, stop or ping")
