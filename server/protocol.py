"""The flight WebSocket's messages (``docs/protocol.md``): one pydantic model per message, in both directions.

    client -> server   ``ClientMessage``: ``Start``, ``Input``, ``Played``, ``Stop``, ``Ping``
    server -> client   ``ServerMessage``: ``Ready``, ``Queue``, ``Chunk``, ``Recording``, ``Pong``, ``Error``
    binary frames      ``frame_message``: 8-byte header (chunk index, frame index) + one JPEG

Each model's ``type`` field is its tag in the discriminated union of its direction. ``parse_client_message`` turns
one received frame into a client message or raises ``ProtocolError`` with a code and a message naming the bad field;
nothing reaches the engine without passing through it, and it raises nothing else (JSON nested deeper than
``MAX_JSON_DEPTH`` is refused before it is parsed). Every server message goes out as ``to_wire(message)``.
tests/server/test_protocol.py checks the tables of docs/protocol.md against these models.
"""
from __future__ import annotations

import json
import re
import struct
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from models.action_format import NUM_ACTIONS

MAX_SEED = 2**31 - 1
MAX_SEQ = 2**53
MAX_T_MS = 1e13
MAX_JSON_DEPTH = 16  # nesting of arrays and objects; a valid message needs 3 (input: object, list, number)
FRAME_HEADER = struct.Struct(">II")  # chunk index, frame index (uint32 big-endian)
ErrorCode = Literal["bad_json", "bad_message", "unknown_type", "bad_field", "oversized", "bad_image", "not_started",
                    "already_started", "not_ready", "busy", "rate_limited", "generation_failed"]


class ProtocolError(ValueError):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---- client -> server -------------------------------------------------------------------------------------------
class ClientModel(BaseModel):
    # strict: no coercion (true is not 1, "2" is not 2); a float field still takes an integer. Unknown keys are
    # ignored, so a newer client's extra fields do not break an older server.
    model_config = ConfigDict(strict=True, extra="ignore")


def _flag(value: float) -> int:
    """0 or 1 (a JSON 1.0 too, as before; never true/false, which strict mode refuses) -> int."""
    if value not in (0, 1):
        raise PydanticCustomError("flag", "must be 0 or 1")
    return int(value)


def _data_url(value: Optional[str]) -> Optional[str]:
    if value is not None and not value.startswith("data:image/"):
        raise PydanticCustomError("data_url", "expected a data URL (data:image/png;base64,...) or null")
    return value


def _unicode(value: str) -> str:
    """Text that encodes as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates, which no encoder takes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("unicode", "not valid Unicode (a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]
Finite = Annotated[float, AllowInfNan(False)]
Flags = Annotated[list[Annotated[Finite, AfterValidator(_flag)]], Field(min_length=NUM_ACTIONS, max_length=NUM_ACTIONS)]
Mags = Annotated[list[Annotated[Finite, Field(ge=0, le=1)]], Field(min_length=NUM_ACTIONS, max_length=NUM_ACTIONS)]


def _limit(info: ValidationInfo, name: str) -> Optional[int]:
    """A settings-dependent limit passed as validation context by ``parse_client_message``."""
    return (info.context or {}).get(name)


class Start(ClientModel):
    type: Literal["start"] = "start"
    prompt: Text
    image: Annotated[Optional[str], AfterValidator(_data_url)] = None  # None: a bundled sample
    sample: Optional[str] = Field(None, pattern=r"^[a-z0-9_-]{1,64}$")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)  # None: random
    steps: Optional[int] = Field(None, ge=1)  # None: the world's

    @field_validator("prompt")
    @classmethod
    def _prompt_fits(cls, prompt: str, info: ValidationInfo) -> str:
        limit = _limit(info, "max_prompt_chars")
        if limit is not None and len(prompt) > limit:
            raise PydanticCustomError("too_long", "{length} characters, more than {limit}",
                                      {"length": len(prompt), "limit": limit})
        return prompt

    @field_validator("steps")
    @classmethod
    def _steps_fit(cls, steps: Optional[int], info: ValidationInfo) -> Optional[int]:
        limit = _limit(info, "max_steps")
        if steps is not None and limit is not None and steps > limit:
            raise PydanticCustomError("too_many", "must be at most {limit}", {"limit": limit})
        return steps


class Input(ClientModel):
    type: Literal["input"] = "input"
    seq: int = Field(ge=0, le=MAX_SEQ)
    t: Finite = Field(ge=0, le=MAX_T_MS)  # client time in ms
    flags: Flags  # 0/1 per action
    mags: Mags  # 0..1 per action (fraction of full scale)


class Played(ClientModel):
    type: Literal["played"] = "played"
    frame: int = Field(ge=-1, le=MAX_SEQ)  # global index of the last frame shown; -1: none yet


class Stop(ClientModel):
    type: Literal["stop"] = "stop"


class Ping(ClientModel):
    type: Literal["ping"] = "ping"


ClientMessage = Annotated[Union[Start, Input, Played, Stop, Ping], Field(discriminator="type")]
CLIENT_MESSAGE = TypeAdapter(ClientMessage)


# ---- server -> client -------------------------------------------------------------------------------------------
class ServerModel(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a bug on our side, not a new field


class Ready(ServerModel):
    type: Literal["ready"] = "ready"
    session: str
    fps: int
    chunk_frames: int
    actions: list[str]
    weights: str
    random_weights: bool
    width: int
    height: int
    seed: int
    steps: int
    full_scale: list[float]
    generation: Literal["chunked", "causal"]  # causal: chunks are the blocks of one stream (no repeated frame)
    replica: Optional[str] = None  # the replica serving the flight (python -m server.cluster); None: one process


class Queue(ServerModel):
    type: Literal["queue"] = "queue"
    position: int  # 1 = next; 0 = the flight is active


class Chunk(ServerModel):
    type: Literal["chunk"] = "chunk"
    index: int
    frames: int  # binary frames that follow
    first_frame: int  # global index of the first of them
    actions: list[list[list[float]]]  # (k, 2, 8) raw
    gen_ms: float
    input_seq: int  # the last input seq inside the chunk's window, -1 if none


class Recording(ServerModel):
    type: Literal["recording"] = "recording"
    id: Optional[str]
    video: Optional[str]
    actions: Optional[str]
    frames: int
    chunks: int
    truncated: bool

    @classmethod
    def of(cls, id: Optional[str] = None, frames: int = 0, chunks: int = 0, truncated: bool = False) -> Recording:
        """With the download URLs of recording ``id`` (the ``/recordings`` routes); None: nothing was recorded."""
        url = None if id is None else f"/recordings/{id}"
        return cls(id=id, video=url and url + ".mp4", actions=url and url + ".json", frames=frames, chunks=chunks,
                   truncated=truncated)


class Pong(ServerModel):
    type: Literal["pong"] = "pong"


class Error(ServerModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str  # names the bad field


ServerMessage = Annotated[Union[Ready, Queue, Chunk, Recording, Pong, Error], Field(discriminator="type")]


def to_wire(message: ServerModel) -> dict:
    """The JSON object a server message is sent as: the one serialisation of every outbound message."""
    return message.model_dump(mode="json")


def frame_message(chunk_index: int, frame_index: int, jpeg: bytes) -> bytes:
    """The binary WebSocket message of one frame: 8-byte header + JPEG."""
    return FRAME_HEADER.pack(chunk_index, frame_index) + jpeg


# ---- parsing ------------------------------------------------------------------------------------------------------
def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string (unrolled: linear and fast on long strings)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
MAX_JSON_BRACKETS = 4096  # no valid message has more than a few arrays and objects


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do not count); a text with more
    than ``MAX_JSON_BRACKETS`` brackets counts as deeper than any limit, without looking further."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if len(brackets) > MAX_JSON_BRACKETS:
        return len(brackets)
    depth = deepest = 0
    for char in brackets:
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_problem(error: dict) -> str:
    """One pydantic error -> ``"flags[3]: must be 0 or 1, got 2"`` (the location without the union tag)."""
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"][1:]).lstrip(".")
    got = "" if error["type"] == "missing" else f", got {_brief(error['input'])}"
    return f"{where}: {error['msg']}{got}"


def parse_client_message(raw, max_bytes: int, max_start_bytes: int, max_prompt_chars: int,
                         max_steps: int) -> ClientMessage:
    """One WebSocket frame (str or bytes) -> a validated message. ``start`` may be up to ``max_start_bytes``
    (it carries the image); every other message up to ``max_bytes``."""
    if raw is None or isinstance(raw, (bytes, bytearray)):
        raise ProtocolError("bad_message", "binary messages are not accepted from clients; send JSON text")
    size = len(raw) if len(raw) > max_start_bytes else len(raw.encode("utf-8", "replace"))
    if size > max_start_bytes:
        raise ProtocolError("oversized", f"message of {size} bytes exceeds the limit of {max_start_bytes}")
    if raw.count("[") + raw.count("{") > MAX_JSON_DEPTH and json_depth(raw) > MAX_JSON_DEPTH:  # counts: C speed
        raise ProtocolError("bad_json", f"JSON nested deeper than {MAX_JSON_DEPTH} levels (or with more than "
                                        f"{MAX_JSON_BRACKETS} arrays and objects)")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise ProtocolError("bad_json", f"not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind != "start" and size > max_bytes:
        raise ProtocolError("oversized", f"{kind!r} message of {size} bytes exceeds the limit of {max_bytes}")
    if kind is None:
        raise ProtocolError("unknown_type", "missing 'type'")
    try:
        return CLIENT_MESSAGE.validate_python(
            data, context={"max_prompt_chars": max_prompt_chars, "max_steps": max_steps})
    except ValidationError as invalid:
        error = invalid.errors()[0]
        if error["type"] == "union_tag_invalid":
            raise ProtocolError("unknown_type", f"unknown type {str(kind)[:40]!r}; expected one of "
                                                f"{error['ctx']['expected_tags']}") from None
        raise ProtocolError("bad_field", _field_problem(error)) from None
