"""server.protocol: bad WebSocket messages get an error naming the problem and the session goes on."""
import json

import pytest

ZEROS = [0] * 8


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
])
def test_bad_messages_before_start(make_client, payload, code, names):
    client = make_client()
    with client.websocket_connect("/ws") as ws:
        got, message = error_code(ws, payload)
        assert got == code and names in message
        ws.send_json({"type": "ping"})  # the session goes on
        assert ws.receive_json() == {"type": "pong"}


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
            while True:  # chunks keep arriving meanwhile
                ws.send_text(payload if isinstance(payload, str) else json.dumps(payload))
                message = ws.receive()
                while message.get("text") is None or json.loads(message["text"])["type"] in ("chunk",):
                    message = ws.receive()
                data = json.loads(message["text"])
                assert data["type"] == "error", data
                assert data["code"] == code, (payload, data)
                break
        ws.send_json({**good, "seq": 2, "t": 500.0})  # time going backwards
        while (data := ws.receive()).get("text") is None or json.loads(data["text"])["type"] == "chunk":
            pass
        data = json.loads(data["text"])
        assert data["code"] == "bad_field" and data["message"].startswith("t:")
    metrics = client.get("/metrics").text
    assert 'wanfly_errors_total{code="bad_field"}' in metrics
