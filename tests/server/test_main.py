"""A real ``python -m server`` process on 127.0.0.1: concurrent sessions, a client that never reads, oversized and
malformed messages, Origin and token checks. Loopback only, every loop bounded."""
import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import imageio_ffmpeg
import numpy as np
import pytest
import simplejpeg
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.testing import server_process

TOKEN = "test-token"
GOOD_ORIGIN = "http://good.example"
START = {"type": "start", "prompt": "a drone over hills", "image": None, "seed": 1}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    with server_process("--token", TOKEN, "--allowed_origins", GOOD_ORIGIN, "--max_sessions", "4",
                        "--max_waiting", "1", "--send_timeout_s", "2", "--send_queue_frames", "8",
                        "--max_upload_bytes", "65536", "--gradio", "0",
                        log_path=log) as url:
        yield url


def ws_url(base, token=TOKEN):
    return base.replace("http://", "ws://") + "/ws" + (f"?token={token}" if token else "")


def open_ws(base, token=TOKEN, origin=None):
    return connect(ws_url(base, token), origin=origin, compression=None, proxy=None, open_timeout=10, max_size=2**22)


async def fly(base, seconds, counts, key, stop_when=None):
    """Start a flight, report input at 10 Hz, count chunks and frames until ``seconds`` pass."""
    async with open_ws(base) as ws:
        await ws.send(json.dumps(START))
        started = time.monotonic()
        deadline = started + seconds
        seq = 0
        while time.monotonic() < deadline and not (stop_when and stop_when()):
            await ws.send(json.dumps({"type": "input", "seq": seq, "t": (time.monotonic() - started) * 1000,
                                      "flags": [1] + [0] * 7, "mags": [1.0] + [0.0] * 7}))
            seq += 1
            try:
                message = await asyncio.wait_for(ws.recv(), 0.1)
            except asyncio.TimeoutError:
                continue
            if isinstance(message, bytes):
                counts[key]["frames"] += 1
            elif json.loads(message)["type"] == "chunk":
                counts[key]["chunks"] += 1


def metric(base, name):
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_four_sessions_progress_fairly_and_the_line_is_bounded(base):
    async def main():
        counts = {i: {"chunks": 0, "frames": 0} for i in range(4)}
        done = lambda: all(c["chunks"] >= 2 for c in counts.values())  # noqa: E731
        flights = [asyncio.create_task(fly(base, 45, counts, i, stop_when=done)) for i in range(4)]
        await asyncio.sleep(1.0)
        async with open_ws(base) as waiting, open_ws(base) as refused:
            await waiting.send(json.dumps(START))
            assert json.loads(await waiting.recv())["type"] == "ready"
            assert json.loads(await waiting.recv()) == {"type": "queue", "position": 1}
            await refused.send(json.dumps(START))
            assert json.loads(await refused.recv())["code"] == "busy"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(refused.recv(), 10)
            assert closed.value.rcvd.code == 1013
        await asyncio.gather(*flights)
        return counts

    counts = asyncio.run(main())
    chunks = [c["chunks"] for c in counts.values()]
    assert min(chunks) >= 2, counts
    assert max(chunks) - min(chunks) <= 1, counts  # round-robin: one chunk each in turn
    for c in counts.values():
        assert c["frames"] >= 8 * (c["chunks"] - 1)  # the last chunk's frames may still be in flight


def raw_handshake(base, token=TOKEN):
    """A WebSocket client on a bare socket with a tiny receive buffer, which never reads after the handshake."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    payload = json.dumps(START).encode()
    mask = os.urandom(4)
    header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload)) if len(payload) >= 126 else \
        struct.pack("!BB", 0x81, 0x80 | len(payload))
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock


def test_a_client_that_never_reads_does_not_stall_the_others(base):
    """A silent client holds one of the 4 sessions; the other 3 still get chunks in turn. (Its frames pile up in
    kernel buffers first; the bounded queue, drops and send timeout behind that are covered in
    test_session.py, since filling MBs of loopback buffers with 64x64 frames takes minutes.)"""
    silent = raw_handshake(base)
    try:
        counts = {i: {"chunks": 0, "frames": 0} for i in range(3)}

        async def main():
            done = lambda: all(c["chunks"] >= 2 for c in counts.values())  # noqa: E731
            await asyncio.gather(*(fly(base, 45, counts, i, stop_when=done) for i in range(3)))
        asyncio.run(main())
        assert all(c["chunks"] >= 2 for c in counts.values()), counts
        deadline = time.monotonic() + 10  # the readers' disconnects are processed asynchronously
        while metric(base, "wanfly_sessions_active") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(base, "wanfly_sessions_active") == 1  # the silent client's flight is still on
    finally:
        silent.close()


def test_oversized_and_malformed_messages(base):
    async def main():
        async with open_ws(base) as ws:
            for payload, code in (("not json", "bad_json"),
                                  ('{"type": "ping", "pad": "' + "x" * 20000 + '"}', "oversized"),
                                  (json.dumps({"type": "input", "seq": 0, "t": 0, "flags": [0] * 8, "mags": [0] * 8}),
                                   "not_started"), (b"\x01\x02", "bad_message")):
                await ws.send(payload)
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert message["type"] == "error" and message["code"] == code
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
            await ws.send("x" * 400_000)  # beyond uvicorn's ws_max_size: the server closes with 1009
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1009
    asyncio.run(main())


def test_origin_and_token(base):
    async def handshake(token=TOKEN, origin=None):
        try:
            async with open_ws(base, token, origin) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
        except InvalidStatus as refused:
            return refused.response.status_code

    async def main():
        return [await handshake(token=None), await handshake(token="wrong"),
                await handshake(origin="http://evil.example"), await handshake(origin=GOOD_ORIGIN),
                await handshake(origin=base), await handshake()]
    assert asyncio.run(main()) == [403, 403, 403, "pong", "pong", "pong"]

    def status(path, method="GET", headers=None, body=None):
        request = urllib.request.Request(base + path, method=method, headers=headers or {}, data=body)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    body = json.dumps({"prompt": "x", "num_frames": 10}).encode()
    json_type = {"Content-Type": "application/json"}
    assert status("/generate", "POST", json_type, body)[0] == 401
    assert status("/generate", "POST", {**json_type, "Authorization": "Bearer wrong"}, body)[0] == 401
    assert status("/generate", "POST", {**json_type, "Authorization": f"Bearer {TOKEN}"}, body)[0] == 422
    assert status("/metrics")[0] == 401 and status("/recordings/abcdefgh.mp4")[0] == 401
    authorized = {**json_type, "Authorization": f"Bearer {TOKEN}"}
    assert status("/generate", "POST", {**authorized, "Origin": "http://evil.example"}, body)[0] == 403  # a browser
    assert status("/generate", "POST", {**authorized, "Origin": GOOD_ORIGIN}, body)[0] == 422
    # DNS rebinding: evil.example re-pointed at 127.0.0.1; the page's own origin, the right token, a wrong Host
    rebound = {"Host": "evil.example:8710", "Origin": "http://evil.example:8710", "Authorization": f"Bearer {TOKEN}"}
    assert raw_status(base, "GET", "/api/config", rebound) == 400
    assert raw_status(base, "GET", f"/ws?token={TOKEN}", {**rebound, "Upgrade": "websocket", "Connection": "Upgrade",
                                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                          "Sec-WebSocket-Version": "13"}) == 403
    code, headers = status(f"/metrics?token={TOKEN}")
    assert code == 200 and "wanfly_token=" in headers.get("set-cookie", "")
    assert status("/healthz")[0] == 200 and status("/readyz")[0] == 200 and status("/api/config")[0] == 200


def raw_status(base, method, path, headers) -> int:
    """The status code of one request with exactly these headers (``Host`` included), on a bare socket."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        sock.sendall("\r\n".join(lines).encode())
        response = b""
        while b"\r\n" not in response:
            response += sock.recv(1024)
    return int(response.split()[1])


def alignment_error(recorded, sent, offset):
    """Mean absolute difference between recorded frame i and sent frame i + offset, over the frames both have."""
    pairs = [(r, sent[i + offset]) for i, r in enumerate(recorded) if 0 <= i + offset < len(sent)]
    return float(np.mean([np.abs(r.astype(np.int16) - s.astype(np.int16)).mean() for r, s in pairs]))


def test_a_causal_flight_over_uvicorn_is_recorded_as_sent(tmp_path):
    """``--generation causal``: one stream per flight, one block per chunk message (5 frames, then 4), the held key
    in the blocks' actions, and a recording that is exactly the frames sent (the mp4 matches the JPEGs best at the
    same index, not shifted by one) with one action step per block."""
    with server_process("--generation", "causal", "--max_sessions", "2", "--gradio", "0",
                        log_path=tmp_path / "server.log") as url:
        config = json.loads(urllib.request.urlopen(url + "/api/config", timeout=10).read())
        assert config["world"]["generation"] == "causal" and config["chunk_frames"] == 5
        assert config["limits"]["max_sessions"] == 2 and config["limits"]["stream_bytes"] > 0

        async def main():
            chunks, frames = [], []
            async with connect(url.replace("http://", "ws://") + "/ws", compression=None, proxy=None,
                               max_size=2**22) as ws:
                await ws.send(json.dumps(START))
                ready = json.loads(await ws.recv())
                assert ready["type"] == "ready" and ready["generation"] == "causal"
                seq = 0
                while len(chunks) < 8:
                    await ws.send(json.dumps({"type": "input", "seq": seq, "t": seq * 40.0,
                                              "flags": [1] + [0] * 7, "mags": [1.0] + [0.0] * 7}))
                    seq += 1
                    try:
                        message = await asyncio.wait_for(ws.recv(), 0.04)
                    except asyncio.TimeoutError:
                        continue
                    if isinstance(message, bytes):
                        frames.append((*struct.unpack(">II", message[:8]), simplejpeg.decode_jpeg(message[8:])))
                    elif json.loads(message)["type"] == "chunk":
                        chunks.append(json.loads(message))
                await ws.send(json.dumps({"type": "stop"}))
                while (message := await asyncio.wait_for(ws.recv(), 30)) and (
                        isinstance(message, bytes) or json.loads(message)["type"] != "recording"):
                    if isinstance(message, bytes):
                        frames.append((*struct.unpack(">II", message[:8]), simplejpeg.decode_jpeg(message[8:])))
                    else:
                        chunks.append(json.loads(message))
                return chunks, frames, json.loads(message)

        chunks, frames, recording = asyncio.run(main())
        assert [(c["index"], c["frames"], c["first_frame"]) for c in chunks[:3]] == [(0, 5, 0), (1, 4, 5), (2, 4, 9)]
        headers = [(c["index"], c["first_frame"] + i) for c in chunks for i in range(c["frames"])]
        assert [f[:2] for f in frames] == headers
        assert any(np.array(c["actions"])[0, :, 0].tolist() == [1, 0.01] for c in chunks)  # the held forward
        assert (recording["frames"], recording["chunks"]) == (len(frames), len(chunks))
        record = json.loads(urllib.request.urlopen(url + recording["actions"], timeout=10).read())
        assert record["generation"] == "causal" and record["block_frames"] == 1
        assert record["actions"] == [c["actions"][0] for c in chunks]  # one step per block, as sent
        video = tmp_path / "flight.mp4"
        video.write_bytes(urllib.request.urlopen(url + recording["video"], timeout=10).read())
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    recorded = [np.frombuffer(f, np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in reader]
    sent = [f[2] for f in frames]
    assert len(recorded) == len(sent)
    errors = {offset: alignment_error(recorded, sent, offset) for offset in (-1, 0, 1)}
    assert min(errors, key=errors.get) == 0, errors  # frame i is frame i: none dropped or repeated


MODEL_LIBRARIES = ("torch", "diffsynth")  # what start-up must not import before it checks and logs


def imports(lines) -> list[tuple[int, str]]:
    """(line index, module) of each import that ``python -X importtime`` reports, in the order they finished."""
    return [(i, line.split("|")[2].strip()) for i, line in enumerate(lines)
            if line.startswith("import time:") and line.count("|") == 2]


def model_imports(lines) -> list[tuple[int, str]]:
    return [(i, name) for i, name in imports(lines) if name.split(".")[0] in MODEL_LIBRARIES]


def test_start_up_logs_before_the_model_libraries_load_then_its_phases_then_the_url_and_a_taken_port_stops_at_once(
        tmp_path):
    """The log's first line says torch and diffsynth are loading before any of them is imported (the real start-up
    log with ``-X importtime``: a module's line is written when its import finishes); then what start-up is doing
    (loading, warming up), and the URL only once a flight can start; a second server on the same port says the port
    is taken in one line and exits 2 having imported none of the model libraries."""
    log = tmp_path / "server.log"
    with server_process("--gradio", "0", "--log_level", "info", log_path=log,
                        python_options=("-X", "importtime")) as url:
        port = int(url.rsplit(":", 1)[1])
        lines = log.read_text().splitlines()
        logged = [i for i, line in enumerate(lines) if " wanfly" in line]
        loading = next(i for i in logged if "loading torch and diffsynth" in lines[i])
        libraries = model_imports(lines)
        assert {name for _, name in libraries} >= {"torch", "diffsynth"}
        assert loading < min(i for i, _ in libraries), lines[loading - 3:loading + 3]  # said before any of it
        assert loading <= logged[1] and f"listening on 127.0.0.1:{port}" in lines[loading]  # after the random warning
        phases = ["loading the world (world random)", "world loaded in", "warming up: one generation",
                  "warm-up generation took", f"ready: open http://127.0.0.1:{port}/"]
        where = [next(i for i, line in enumerate(lines) if phase in line) for phase in phases]
        assert where == sorted(where) and where[0] > loading, lines
        assert not any("http://" in line for line in lines[:where[-1]]), lines  # no URL before it can serve
        second = subprocess.run([sys.executable, "-X", "importtime", "-m", "server", "--host", "127.0.0.1", "--port",
                                 str(port), "--world", "random", "--gradio", "0"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second
        assert second.stderr.strip().splitlines()[-1] == (
            f"python -m server: error: port {port} on 127.0.0.1 is already in use (another server?); "
            "choose another with --port")
        assert imports(second.stderr.splitlines()) and not model_imports(second.stderr.splitlines())
        assert urllib.request.urlopen(url + "/readyz", timeout=5).status == 200  # the first one still serves


@pytest.mark.parametrize("args, code, last_line", [
    (["--help"], 0, None),
    (["--port", "99999"], 2, "python -m server: error: port must be in 0..65535 (0: any free port), got 99999"),
    (["--max_sessions", "zero"], 2, "python -m server: error: argument --max_sessions: expected int, got 'zero'"),
    (["--world", "/no/such/world"], 1, "error: world: '/no/such/world' is neither 'random', a registered world "
                                       "(['toy']) nor a folder"),
    (["--world", "random", "--artifacts", "/no/such/run"], 1, "error: artifacts: '/no/such/run' has no "
                                                              "action_train_config.json"),
    (["--model_dir", "/no/such/model"], 1, "error: model_dir '/no/such/model' is not a folder")])
def test_help_and_bad_options_answer_before_the_model_libraries_load(args, code, last_line):
    """``--help`` and every option, world or path error answer without importing torch or diffsynth (they take ~10 s
    of a 2-core machine): about 0.5 s of the command instead of 15."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "server", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done
    lines = done.stderr.splitlines()
    assert imports(lines) and not model_imports(lines), model_imports(lines)[:5]
    if last_line is None:
        assert done.stdout.startswith("usage: python -m server") and "--world" in done.stdout
    else:
        assert [line for line in lines if not line.startswith("import time:")][-1] == last_line
