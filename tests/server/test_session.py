"""server.session: a flight through the app (tiny preset, real pipeline): held keys -> (k,2,8) actions, frames,
headers, JPEGs, the recording; queueing and refusal. And Connection with a WebSocket stand-in that stops reading
(narrow unit test of the send path): frames beyond the bounded queue are dropped, a send blocked past the timeout
closes the connection, and the flight is removed from the engine. The real transport is covered in test_main.py."""
import asyncio
import json
import struct
import time
from types import SimpleNamespace

import imageio_ffmpeg
import numpy as np
import pytest
import simplejpeg
from starlette.websockets import WebSocketDisconnect

from models.action_format import ACTION_NAMES
from server.generation.flight import ChunkFrames
from server.metrics import Metrics
from server.protocol import FRAME_HEADER, Chunk
from server.session import Connection
from server.settings import Settings

FORWARD, YAW_LEFT = ACTION_NAMES.index("Forward"), ACTION_NAMES.index("Yaw Left")
SAMPLES_PER_WINDOW = 16  # a chunk's window (2 intervals of 4 frames at 16 fps = 0.5 s) is ~13 samples at 25 Hz


class StalledSocket:
    """Accepts JSON, blocks forever on the first binary frame, never sends anything."""

    def __init__(self):
        self.json, self.bytes_started = [], 0

    async def receive(self):
        await asyncio.sleep(3600)

    async def send_text(self, text):
        self.json.append(json.loads(text))

    async def send_bytes(self, data):
        self.bytes_started += 1
        await asyncio.sleep(3600)

    async def close(self, code=1000, reason=None):
        pass


class Engine:
    def __init__(self):
        self.removed = []

    def remove_flight(self, flight):
        self.removed.append(flight)


def test_stalled_client_drops_frames_then_is_closed():
    settings = Settings(send_queue_frames=4, send_timeout_s=0.3, gradio=False)
    state = SimpleNamespace(settings=settings, metrics=Metrics(), engine=Engine(), ready=True, world=None)
    socket = StalledSocket()

    async def main():
        connection = Connection(socket, state)
        connection.flight = flight = SimpleNamespace(stopped=False, paused=False)
        for index in range(3):  # three chunks of 8 frames arrive while the first send is stuck
            chunk = Chunk(index=index, frames=8, first_frame=8 * index, actions=[], gen_ms=1.0, input_seq=-1)
            connection.notify(ChunkFrames(chunk, [b"jpeg"] * 8))
        started = time.monotonic()
        await asyncio.wait_for(connection.run(), 5)
        return connection, flight, time.monotonic() - started

    connection, flight, elapsed = asyncio.run(main())
    assert 0.3 <= elapsed < 2.0
    assert socket.bytes_started == 1 and socket.json[0]["index"] == 0
    metrics = state.metrics
    assert metrics.value("wanfly_slow_clients_closed_total") == 1
    assert metrics.value("wanfly_frames_dropped_total") == 24 - 4  # the queue keeps the newest 4 frames
    assert connection.frames_dropped == 20
    assert state.engine.removed == [flight] and connection.flight is None


def receive_chunk(ws):
    """Next chunk message and its frames [(chunk index, frame index, jpeg)], skipping other messages."""
    while True:
        message = ws.receive()
        if message.get("text") is None:
            raise AssertionError(f"binary frame before its chunk message: {str(message)[:200]}")
        data = json.loads(message["text"])
        if data["type"] == "chunk":
            break
        assert data["type"] in ("queue", "pong"), data
    frames = []
    for _ in range(data["frames"]):
        raw = ws.receive()["bytes"]
        frames.append((*struct.unpack(">II", raw[:8]), raw[8:]))
    return data, frames


def expected(mags: dict) -> np.ndarray:
    step = np.zeros((2, 8))
    for index, value in mags.items():
        step[:, index] = (1.0, value)
    return step


def test_flight_with_held_keys(make_client, input_pump):
    client = make_client()
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "prompt": "a drone flies over green hills", "image": None, "seed": 3})
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["actions"] == list(ACTION_NAMES)
        assert (ready["fps"], ready["chunk_frames"], ready["width"], ready["height"]) == (16, 9, 64, 64)
        assert ready["random_weights"] is True and "RANDOM" in ready["weights"]
        full = ready["full_scale"]
        chunks, next_frame = [], 0
        with input_pump(ws) as pump:
            forward_from = pump.hold({FORWARD: 1.0})
            both_from = None
            while len(chunks) < 10:
                chunk, frames = receive_chunk(ws)
                chunks.append(chunk)
                assert chunk["index"] == len(chunks) - 1
                assert chunk["frames"] == (9 if chunk["index"] == 0 else 8)  # the repeated first frame is not re-sent
                assert chunk["first_frame"] == next_frame and chunk["gen_ms"] > 0
                assert [f[:2] for f in frames] == [(chunk["index"], next_frame + i) for i in range(len(frames))]
                for _, _, jpeg in frames:
                    assert simplejpeg.decode_jpeg(jpeg).shape == (64, 64, 3)
                next_frame += len(frames)
                actions = np.array(chunk["actions"])
                assert actions.shape == (2, 2, 8)
                if both_from is None and chunk["input_seq"] >= forward_from + 2 * SAMPLES_PER_WINDOW:
                    both_from = pump.hold({FORWARD: 1.0, YAW_LEFT: 1.0})
                    chunk["phase"] = "forward"
                elif both_from is not None and chunk["input_seq"] >= both_from + SAMPLES_PER_WINDOW:
                    chunk["phase"] = "both"
                elif both_from is None and chunk["input_seq"] >= forward_from + SAMPLES_PER_WINDOW:
                    chunk["phase"] = "forward"
        forward = [np.array(c["actions"]) for c in chunks if c.get("phase") == "forward"]
        both = [np.array(c["actions"]) for c in chunks if c.get("phase") == "both"]
        assert forward and both, [c.get("phase") for c in chunks]
        for actions in forward:
            np.testing.assert_allclose(actions, np.stack([expected({FORWARD: full[FORWARD]})] * 2))
        for actions in both:  # two actions at once: forward + yaw
            held = expected({FORWARD: full[FORWARD], YAW_LEFT: full[YAW_LEFT]})
            np.testing.assert_allclose(actions, np.stack([held] * 2))
        assert full[FORWARD] == pytest.approx(0.01) and full[YAW_LEFT] == pytest.approx(1.0)  # documented defaults

        ws.send_json({"type": "stop"})
        while (message := ws.receive_json())["type"] != "recording":
            assert message["type"] in ("chunk",), message
            for _ in range(message["frames"]):
                ws.receive_bytes()
                next_frame += 1
    assert message["frames"] == next_frame
    video = client.get(message["video"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = client.app.state.wanfly.recordings.find(message["id"], ".mp4")
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == next_frame
    record = client.get(message["actions"]).json()
    assert record["prompt"] == "a drone flies over green hills" and record["seed"] == 3
    assert np.array(record["actions"]).shape == (2 * message["chunks"], 2, 8)  # training format (T, 2, 8)
    assert record["chunks"][0]["actions"] == chunks[0]["actions"]


def test_waiting_line_and_refusal(make_client):
    client = make_client(max_sessions=1, max_waiting=1, client_timeout_s=1.5)
    start = {"type": "start", "prompt": "hills", "image": None, "seed": 0}
    with client.websocket_connect("/ws") as first, client.websocket_connect("/ws") as second:
        first.send_json(start)
        assert first.receive_json()["type"] == "ready"
        second.send_json(start)
        assert second.receive_json()["type"] == "ready"
        assert second.receive_json() == {"type": "queue", "position": 1}
        with client.websocket_connect("/ws") as third:
            third.send_json(start)
            assert third.receive_json()["code"] == "busy"
            with pytest.raises(WebSocketDisconnect) as closed:
                third.receive_json()
            assert closed.value.code == 1013
        receive_chunk(first)
        time.sleep(2.5)  # the silent second waits longer than client_timeout_s: the line does not count
        first.send_json({"type": "stop"})
        assert second.receive_json() == {"type": "queue", "position": 0}
        chunk, frames = receive_chunk(second)
        assert chunk["index"] == 0 and len(frames) == 9
    metrics = client.get("/metrics").text
    assert "wanfly_sessions_refused_total 1" in metrics and "wanfly_sessions_total 2" in metrics


class ClosedSocket(StalledSocket):
    """uvicorn after its keepalive closed the socket: every send raises what uvicorn raises then."""

    async def send_bytes(self, data):
        raise RuntimeError("Unexpected ASGI message 'websocket.send', after sending 'websocket.close'.")

    send_text = send_bytes

    async def close(self, code=1000, reason=None):
        raise RuntimeError("Unexpected ASGI message 'websocket.close', after sending 'websocket.close'.")


def test_a_send_after_the_socket_closed_ends_the_connection_quietly():
    settings = Settings(gradio=False)
    state = SimpleNamespace(settings=settings, metrics=Metrics(), engine=Engine(), ready=True, world=None)

    async def main(messages):
        connection = Connection(ClosedSocket(), state)
        connection.flight = flight = SimpleNamespace(stopped=False, paused=False)
        for message in messages:
            connection.notify(message)
        await asyncio.wait_for(connection.run(), 5)  # no exception out of run()
        return flight

    chunk = Chunk(index=0, frames=1, first_frame=0, actions=[], gen_ms=1.0, input_seq=-1)
    flights = [asyncio.run(main([ChunkFrames(chunk, [FRAME_HEADER.pack(0, 0) + b"jpeg"])]))]

    async def close_first():
        connection = Connection(ClosedSocket(), state)
        connection.flight = flight = SimpleNamespace(stopped=False, paused=False)
        connection.close(1008, "test")
        await asyncio.wait_for(connection.run(), 5)
        return flight
    flights.append(asyncio.run(close_first()))
    assert state.engine.removed == flights


def test_the_rate_limit_drops_then_closes_a_flooding_client(make_client):
    client = make_client(max_messages_per_s=20)
    with client.websocket_connect("/ws") as ws:
        for _ in range(40):  # the burst: 2 s worth
            ws.send_json({"type": "ping"})
        assert [ws.receive_json() for _ in range(40)] == [{"type": "pong"}] * 40
        replies = []
        with pytest.raises(WebSocketDisconnect) as closed:
            for _ in range(200):
                ws.send_json({"type": "ping"})
            while True:
                replies.append(ws.receive_json())
    assert closed.value.code == 1008
    limited = [r for r in replies if r.get("code") == "rate_limited"]
    assert len(limited) == 1 and "more than 20 messages a second" in limited[0]["message"]
    assert len([r for r in replies if r == {"type": "pong"}]) < 10  # the rest was dropped unread
    metrics = client.get("/metrics").text
    assert 'wanfly_errors_total{code="rate_limited"} 2' in metrics  # the warning and the close
    assert metric(client, "wanfly_messages_dropped_total") >= 41  # 2 s worth dropped before the close


def metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_stops_playing_pauses_its_flight_and_resumes_it(make_client):
    client = make_client(client_timeout_s=0.6)
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "prompt": "hills", "image": None, "seed": 2})
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "played", "frame": -1})  # a client that reports its position (none played yet)
        chunk, frames = receive_chunk(ws)
        ws.send_json({"type": "played", "frame": frames[1][1]})  # it plays, then its position stops
        assert wait_for(lambda: metric(client, "wanfly_flights_paused") == 1)
        time.sleep(1.0)  # on a loaded machine it may have paused and resumed once before its report came
        assert metric(client, "wanfly_flights_paused") == 1
        made, pauses = metric(client, "wanfly_chunks_total"), metric(client, "wanfly_flights_paused_total")
        time.sleep(1.0)
        assert metric(client, "wanfly_chunks_total") <= made + 1  # at most the chunk under way when it paused
        for _ in range(3):
            ws.send_json({"type": "input", "seq": 0, "t": 0.0, "flags": [0] * 8, "mags": [0.0] * 8})
        time.sleep(1.0)  # talking is no sign of playing, for a client that reports its position: no resume
        assert metric(client, "wanfly_flights_paused") == 1 and metric(client, "wanfly_flights_paused_total") == pauses
        ws.send_json({"type": "played", "frame": frames[-1][1]})  # it plays again
        assert wait_for(lambda: metric(client, "wanfly_flights_paused") == 0)
        deadline = time.monotonic() + 20
        while metric(client, "wanfly_chunks_total") <= made + 1 and time.monotonic() < deadline:
            _, frames = receive_chunk(ws)  # the chunks sent before the pause, then new ones: a player reports each
            ws.send_json({"type": "played", "frame": frames[-1][1]})
        assert metric(client, "wanfly_chunks_total") > made + 1, (made, metric(client, "wanfly_chunks_total"))


def test_a_silent_client_that_never_reports_playback_is_paused_until_it_talks(make_client):
    client = make_client(client_timeout_s=0.6)
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "prompt": "hills", "image": None, "seed": 2})
        assert ws.receive_json()["type"] == "ready"
        assert wait_for(lambda: metric(client, "wanfly_flights_paused") == 1)
        made = metric(client, "wanfly_chunks_total")
        time.sleep(1.0)
        assert metric(client, "wanfly_chunks_total") <= made + 1
        ws.send_json({"type": "ping"})
        assert wait_for(lambda: metric(client, "wanfly_flights_paused") == 0, 2.0)
