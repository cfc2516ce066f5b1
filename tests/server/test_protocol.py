"""server.protocol: client messages parsed into models or refused with a code and the bad field named (directly and
through the app, where the session goes on), server messages on the wire as documented, and docs/protocol.md's
tables naming exactly the models' fields and the error codes."""
import json
import queue
import re
import threading
import time
from pathlib import Path
from typing import get_args

import pytest

from server.protocol import (
    FRAME_HEADER,
    Chunk,
    ClientMessage,
    Error,
    ErrorCode,
    Input,
    Ping,
    Played,
    Pong,
    ProtocolError,
    Queue,
    Recording,
    ServerMessage,
    Start,
    Stop,
    frame_message,
    json_depth,
    parse_client_message,
    to_wire,
)

ZEROS = [0] * 8
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
LIMITS = dict(max_bytes=16384, max_start_bytes=1 << 20, max_prompt_chars=2000, max_steps=50)


def parse(message, **limits):
    raw = message if isinstance(message, (str, bytes)) else json.dumps(message)
    return parse_client_message(raw, **{**LIMITS, **limits})


def test_client_messages_parse_into_their_models():
    start = parse({"type": "start", "prompt": "hills", "sample": "hills_1", "seed": 3, "colour": "red"})
    assert start == Start(prompt="hills", image=None, sample="hills_1", seed=3, steps=None)  # unknown keys ignored
    assert parse({"type": "start", "prompt": "", "image": "data:image/png;base64,AAAA", "steps": 50}).steps == 50
    sample = parse({"type": "input", "seq": 7, "t": 12, "flags": [1.0] + [0] * 7, "mags": [0.5] + [0] * 7})
    assert sample == Input(seq=7, t=12.0, flags=[1] + [0] * 7, mags=[0.5] + [0.0] * 7)
    assert type(sample.flags[0]) is int and type(sample.t) is float
    assert parse({"type": "stop"}) == Stop() and parse('{"type": "ping"}') == Ping()
    assert parse({"type": "start", "prompt": "x" * 3000}, max_prompt_chars=3000).prompt == "x" * 3000
    assert parse({"type": "start", "prompt": "x", "pad": "y" * 20000}).prompt == "x"  # start may carry an image
    assert parse({"type": "played", "frame": 17}) == Played(frame=17) and parse({"type": "played", "frame": -1})
    assert parse({"type": "start", "prompt": "[[[[ {{{{ \" ]]]]", "x": [[[[1]]]]}).prompt == '[[[[ {{{{ " ]]]]'


def test_json_depth_skips_strings_and_is_cheap_on_huge_texts():
    assert json_depth('{"a": [1, {"b": "[[[[[["}], "c": "\\"}') == 3
    assert json_depth("[" * 982 + "]" * 982) == 982
    assert json_depth("[" * 10_000) == 10_000  # beyond MAX_JSON_BRACKETS: counted, not walked
    assert json_depth('"' + "x" * 1_000_000 + '"') == 0


@pytest.mark.parametrize("message, code, starts", [
    ("{", "bad_json", "not valid JSON"),
    ("[" * 982 + "]" * 982, "bad_json", "JSON nested deeper than 16"),  # json.loads: RecursionError
    ('{"type": "ping", "x": ' + "[" * 17 + "]" * 17 + "}", "bad_json", "JSON nested deeper than 16"),
    ('{"type": "start", "prompt": "\\ud800"}', "bad_field", "prompt: not valid Unicode"),
    ({"type": "played", "frame": -2}, "bad_field", "frame:"),
    ({"type": "played", "frame": "3"}, "bad_field", "frame:"),
    ('{"type": "ping", "n": Infinity}', "bad_json", "not valid JSON"),
    (b"{}", "bad_message", "binary"),
    ("3", "bad_message", "expected a JSON object"),
    ({"seq": 1}, "unknown_type", "missing 'type'"),
    ({"type": "land"}, "unknown_type", "unknown type 'land'"),
    ({"type": ["start"]}, "unknown_type", "unknown type"),
    ({"type": "start"}, "bad_field", "prompt:"),
    ({"type": "start", "prompt": "x" * 2001}, "bad_field", "prompt: 2001 characters, more than 2000"),
    ({"type": "start", "prompt": "x", "image": "file:///etc/passwd"}, "bad_field", "image:"),
    ({"type": "start", "prompt": "x", "sample": "A"}, "bad_field", "sample:"),
    ({"type": "start", "prompt": "x", "seed": -1}, "bad_field", "seed:"),
    ({"type": "start", "prompt": "x", "steps": 51}, "bad_field", "steps: must be at most 50"),
    ({"type": "start", "prompt": "x", "steps": "4"}, "bad_field", "steps:"),
    ({"type": "input", "seq": 1.5, "t": 0, "flags": ZEROS, "mags": ZEROS}, "bad_field", "seq:"),
    ({"type": "input", "seq": 1, "t": -1, "flags": ZEROS, "mags": ZEROS}, "bad_field", "t:"),
    ({"type": "input", "seq": 1, "t": 0, "flags": ZEROS + [0], "mags": ZEROS}, "bad_field", "flags:"),
    ({"type": "input", "seq": 1, "t": 0, "flags": [0, 0, 0, 0.5, 0, 0, 0, 0], "mags": ZEROS}, "bad_field",
     "flags[3]: must be 0 or 1"),
    ({"type": "input", "seq": 1, "t": 0, "flags": ZEROS, "mags": [0, -0.1] + ZEROS[2:]}, "bad_field", "mags[1]:"),
    ({"type": "input", "seq": 1, "t": 0, "flags": ZEROS, "mags": ZEROS, "pad": "x" * 20000}, "oversized",
     "'input' message"),
])
def test_bad_client_messages_name_the_problem(message, code, starts):
    with pytest.raises(ProtocolError) as refused:
        parse(message)
    assert refused.value.code == code and refused.value.message.startswith(starts), refused.value.message


def test_server_messages_on_the_wire():
    assert to_wire(Pong()) == {"type": "pong"}
    assert to_wire(Queue(position=2)) == {"type": "queue", "position": 2}
    assert to_wire(Error(code="busy", message="server full")) == {"type": "error", "code": "busy",
                                                                  "message": "server full"}
    assert to_wire(Recording.of()) == {"type": "recording", "id": None, "video": None, "actions": None, "frames": 0,
                                       "chunks": 0, "truncated": False}
    recording = to_wire(Recording.of("abcdefgh", frames=17, chunks=2, truncated=True))
    assert (recording["video"], recording["actions"]) == ("/recordings/abcdefgh.mp4", "/recordings/abcdefgh.json")
    chunk = Chunk(index=1, frames=8, first_frame=9, actions=[[[1] + [0] * 7, [0.01] + [0] * 7]], gen_ms=12.5,
                  input_seq=-1)
    assert json.loads(json.dumps(to_wire(chunk))) == {"type": "chunk", "index": 1, "frames": 8, "first_frame": 9,
                                                      "actions": [[[1.0] + [0.0] * 7, [0.01] + [0.0] * 7]],
                                                      "gen_ms": 12.5, "input_seq": -1}
    with pytest.raises(ValueError):
        Error(code="teapot", message="not a documented code")
    with pytest.raises(ValueError):
        Queue(position=1, postion=2)  # a misspelt field is refused, not sent
    assert frame_message(3, 70000, b"jpeg") == b"\x00\x00\x00\x03\x00\x01\x11\x70jpeg"
    assert FRAME_HEADER.size == 8


def doc_section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def first_cells(section: str) -> list[str]:
    cells = [re.split(r"(?<!\\)\|", line) for line in section.splitlines() if line.startswith("|")]
    return [row[1].strip() for row in cells]


def documented_fields(section: str) -> dict:
    """``{type: {field, ...}}`` of the message rows (`{"type":"start", "prompt":str, ...}`) of a table."""
    rows = {}
    for cell in first_cells(section):
        if cell.startswith('`{"type":'):
            rows[re.match(r'`\{"type":"(\w+)"', cell).group(1)] = set(re.findall(r'"(\w+)":', cell))
    return rows


@pytest.mark.parametrize("title, union", [("Client -> server", ClientMessage), ("Server -> client", ServerMessage)])
def test_docs_tables_name_exactly_each_models_fields(title, union):
    models = get_args(get_args(union)[0])  # Annotated[Union[...], Field(discriminator)] -> the models
    assert documented_fields(doc_section(title)) == {m.model_fields["type"].default: set(m.model_fields)
                                                     for m in models}


def test_docs_error_table_lists_exactly_the_error_codes():
    codes = {cell.strip("`") for cell in first_cells(doc_section("Errors")) if re.fullmatch(r"`\w+`", cell)}
    assert codes == set(get_args(ErrorCode))


def error_code(ws, payload) -> tuple[str, str]:
    if isinstance(payload, bytes):
        ws.send_bytes(payload)
    else:
        ws.send_text(payload if isinstance(payload, str) else json.dumps(payload))
    message = ws.receive_json()
    assert message["type"] == "error", message
    return message["code"], message["message"]


@pytest.mark.parametrize("payload, code, names", [
    ("not json", "bad_json", "JSON"),
    ("[1, 2]", "bad_message", "object"),
    (b"\x00\x01", "bad_message", "binary"),
    ({"prompt": "x"}, "unknown_type", "type"),
    ({"type": "fly"}, "unknown_type", "fly"),
    ({"type": "input", "seq": 0, "t": 0, "flags": ZEROS, "mags": ZEROS}, "not_started", "start"),
    ({"type": "stop"}, "not_started", "stop"),
    ({"type": "start", "prompt": 5, "image": None}, "bad_field", "prompt"),
    ({"type": "start", "prompt": "x" * 2001, "image": None}, "bad_field", "prompt"),
    ({"type": "start", "prompt": "x", "image": "http://example.com/a.png"}, "bad_field", "image"),
    ({"type": "start", "prompt": "x", "image": "data:image/png;base64,AAAA"}, "bad_image", "image"),
    ({"type": "start", "prompt": "x", "image": "data:image/png;base64,@@@"}, "bad_image", "base64"),
    ({"type": "start", "prompt": "x", "image": None, "sample": "../../etc/passwd"}, "bad_field", "sample"),
    ({"type": "start", "prompt": "x", "image": None, "sample": "nope"}, "bad_image", "sample"),
    ({"type": "start", "prompt": "x", "image": None, "steps": 0}, "bad_field", "steps"),
    ({"type": "start", "prompt": "x", "image": None, "steps": 2.5}, "bad_field", "steps"),
    ({"type": "start", "prompt": "x", "image": None, "seed": True}, "bad_field", "seed"),
    ({"type": "ping", "pad": "x" * 20000}, "oversized", "limit"),
    ("[" * 982 + "]" * 982, "bad_json", "nested"),  # once: RecursionError, a traceback and close 1006
    ("[" * 400_000 + "]" * 400_000, "bad_json", "nested"),
    ('{"type": "start", "prompt": "\\udfff", "image": null}', "bad_field", "prompt"),
])
def test_bad_messages_before_start(make_client, payload, code, names):
    client = make_client()
    with client.websocket_connect("/ws") as ws:
        got, message = error_code(ws, payload)
        assert got == code and names in message
        ws.send_json({"type": "ping"})  # the session goes on
        assert ws.receive_json() == {"type": "pong"}


def receive_within(ws, seconds, payload, limit):
    """``ws.receive()`` or a failure naming ``payload`` after ``seconds`` (the test client's receive has no
    timeout: a missing reply would otherwise hang until pytest's 300 s)."""
    box = queue.Queue()
    threading.Thread(target=lambda: box.put(ws.receive()), daemon=True).start()
    try:
        return box.get(timeout=max(seconds, 0.0))
    except queue.Empty:
        pytest.fail(f"no error reply to {payload!r} within {limit:g} s")


def error_reply(ws, payload, seconds=30.0):
    """Send ``payload``; the error it gets, skipping the flight's frames and chunk messages meanwhile."""
    ws.send_text(payload if isinstance(payload, str) else json.dumps(payload))
    deadline = time.monotonic() + seconds
    while True:
        message = receive_within(ws, deadline - time.monotonic(), payload, seconds)
        if message.get("text") is None:
            continue  # a binary frame
        data = json.loads(message["text"])
        if data["type"] == "error":
            return data
        assert data["type"] == "chunk", (payload, data)  # anything else is a wrong reply


def test_bad_input_during_a_flight(make_client, png_url):
    client = make_client()
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "prompt": "hills", "image": png_url, "seed": 1, "steps": 1})
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["steps"] == 1
        good = {"type": "input", "seq": 1, "t": 1000.0, "flags": ZEROS, "mags": ZEROS}
        cases = [
            ('{"type": "input", "seq": 2, "t": 1, "flags": [0,0,0,0,0,0,0,0], "mags": [NaN,0,0,0,0,0,0,0]}',
             "bad_json"),
            ({**good, "flags": [0] * 7}, "bad_field"),
            ({**good, "flags": [2] + [0] * 7}, "bad_field"),
            ({**good, "flags": [True] + [0] * 7}, "bad_field"),
            ({**good, "mags": [1.5] + [0] * 7}, "bad_field"),
            ({**good, "mags": "fast"}, "bad_field"),
            ({**good, "seq": -1}, "bad_field"),
            ({**good, "t": "now"}, "bad_field"),
            ({**good, "t": 1e300}, "bad_field"),
            ({"type": "start", "prompt": "again", "image": None}, "already_started"),
        ]
        ws.send_json(good)
        for payload, code in cases:
            data = error_reply(ws, payload)
            assert data["code"] == code, (payload, data)
        data = error_reply(ws, {**good, "seq": 2, "t": 500.0})  # time going backwards
        assert data["code"] == "bad_field" and data["message"].startswith("t:"), data
    metrics = client.get("/metrics").text
    assert 'wanfly_errors_total{code="bad_field"}' in metrics


# ---- mutation run (scripts/mutation.sh server/protocol.py): the exact refusals, at each limit ------------------
NOT_INT = "Input should be a valid integer"


@pytest.mark.parametrize("message, text", [
    (b"{}", "binary messages are not accepted from clients; send JSON text"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"type": "ping", "n": NaN}', "not valid JSON: NaN is not allowed"),
    ({"type": "start"}, "prompt: Field required"),  # a missing field: no "got"
    ({"type": "start", "prompt": "x", "image": "file:///etc/passwd"},
     "image: expected a data URL (data:image/png;base64,...) or null, got 'file:///etc/passwd'"),
    ({"type": "input", "seq": 1, "t": 0, "flags": [0, 0, 0, 0.5, 0, 0, 0, 0], "mags": ZEROS},
     "flags[3]: must be 0 or 1, got 0.5"),
    # the offending value is shown whole up to 40 characters of its repr, else as 37 + "..."
    ({"type": "start", "prompt": "x", "seed": "y" * 38}, f"seed: {NOT_INT}, got '" + "y" * 38 + "'"),
    ({"type": "start", "prompt": "x", "seed": "y" * 39}, f"seed: {NOT_INT}, got '" + "y" * 36 + "..."),
    ({"type": "z" * 50}, "unknown type '" + "z" * 40 + "'; expected one of 'start', 'input', 'played', 'stop', 'ping'"),
])
def test_refusals_read_exactly(message, text):
    with pytest.raises(ProtocolError) as refused:
        parse(message)
    assert refused.value.message == text and str(refused.value) == text  # a ValueError whose text is the message


def padded_ping(size: int) -> str:
    """A ping message of exactly ``size`` bytes."""
    raw = '{"type": "ping", "pad": ""}'
    return raw[:-2] + "x" * (size - len(raw)) + raw[-2:]


def test_size_limits_are_inclusive_and_count_utf8_bytes():
    assert parse(padded_ping(100), max_bytes=100) == Ping()  # exactly at the limit: accepted
    with pytest.raises(ProtocolError, match="^'ping' message of 101 bytes exceeds the limit of 100$"):
        parse(padded_ping(101), max_bytes=100)
    start = json.dumps({"type": "start", "prompt": "x", "image": None, "pad": ""})
    exact = start[:-2] + "x" * (1000 - len(start)) + start[-2:]
    assert parse(exact, max_start_bytes=1000).prompt == "x"
    with pytest.raises(ProtocolError) as refused:
        parse(exact[:-2] + "x" + exact[-2:], max_start_bytes=1000)
    assert (refused.value.code, refused.value.message) == ("oversized",
                                                           "message of 1001 bytes exceeds the limit of 1000")
    # 600 characters but 1200 bytes of UTF-8; and exactly 1000 characters, more than 1000 bytes
    for text in ('{"type": "start", "prompt": "' + "é" * 580 + '"}', padded_ping(1000)[:-3] + 'é"}'):
        with pytest.raises(ProtocolError) as refused:
            parse(text, max_start_bytes=1000)
        assert refused.value.code == "oversized" and "of 1000" in refused.value.message, refused.value.message
    assert parse('{"type": "ping", "x": "\ud800"}') == Ping()  # a lone surrogate is counted, not an encode error


def test_nesting_limit_counts_arrays_and_objects_and_allows_exactly_16():
    many = '{"type": "ping", "x": [' + ", ".join(["[]"] * 30) + "]}"  # 32 brackets, nested 3 deep
    assert parse(many) == Ping()
    deepest = '{"type": "ping", "y": [], "x": ' + "[" * 15 + "]" * 15 + "}"  # exactly 16 levels
    assert json_depth(deepest) == 16 and parse(deepest) == Ping()
    objects = '{"type": "ping", "x": ' + '{"a": ' * 16 + "1" + "}" * 17  # 17 levels of objects, no array
    with pytest.raises(ProtocolError, match="^JSON nested deeper than 16"):
        parse(objects)


def test_json_depth_counts_closing_brackets_once_and_counts_exactly_4096():
    assert json_depth("[][[]]") == 2
    assert json_depth("[" * 2048 + "]" * 2048) == 2048  # 4096 brackets: still walked


def test_recording_message_names_its_id():
    assert to_wire(Recording.of("abcdefgh", frames=17, chunks=2))["id"] == "abcdefgh"
