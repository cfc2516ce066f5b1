"""Probe a real ``python -m server`` on loopback with hostile input and hard kills (issue 19):
``python scripts/probe.py [--messages 10000] [--kill_trials 20] [--out probe.json] [server options]``.

Barrage: a viewer flies (input at 25 Hz, ``played`` at 4 Hz) and its frame rate is measured before and during the
barrage (frames per second between its first and last chunk of each window). Meanwhile ``--messages`` malformed
messages of every kind (``kinds()``: bad JSON, deep nesting, wrong types, unknown types, huge, binary frames, lone
surrogates, a start during a flight) go out over senders at half the message rate limit (the first one flies: its
flight must go on; none may be closed), plus one flooder that sends as fast as it can (closed 1008 by the rate
limit, then reconnects) and, once, a message over the size limit (1009),
and a dead client (starts a flight, then never reads again: its flight must pause within seconds). Counted: server
crashes, tracebacks/errors in the server log, the viewer's frame rate ratio, closes by code.

Kill trials: a server with ``--recordings_dir`` flies one flight of changing input; a random 0..4 s after its first
chunk came, the server's whole process tree (ffmpeg too: as ``docker kill`` does) gets SIGKILL at once. The parts it
left must be readable and consistent (``models.media.read_recording_part``: frames = 1 + 4 steps, the video holds them
whole, the steps equal the actions of the chunks the client was sent, at most the last chunk sent missing), and
finish as a cut-off recording
(``recover_recordings``, what the next server start runs); the first trial's folder is also served by a fresh server
(``GET /recordings`` says ``cut_off``; the mp4 download decodes to its frame count).

Results go to stdout (and ``--out``) as JSON; exit 1 when a goal is missed. tests/server/test_probe.py runs a small
version of both.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.media import count_whole_frames, read_recording_part  # noqa: E402
from server.media.recording import FileStore, recover_recordings  # noqa: E402
from server.testing import free_port  # noqa: E402

START = {"type": "start", "prompt": "a drone over hills", "image": None, "seed": 1}
LOG_PROBLEMS = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|Exception in")
WS_LIMIT_BYTES = 2**24


def input_message(seq: int, t_ms: float, flags=None, mags=None) -> dict:
    return {"type": "input", "seq": seq, "t": t_ms, "flags": flags or [1] + [0] * 7, "mags": mags or [1.0] + [0.0] * 7}


# ---- hostile messages ------------------------------------------------------------------------------------------
def kinds() -> list:
    """Malformed messages of every kind (text or bytes), each answered with an ``error`` and nothing else."""
    good = input_message(0, 0.0)
    return [
        "{", "not json", '{"type": "ping", "n": NaN}', '{"type": "ping", "n": Infinity}', "\x00\x01", "",
        "[" * 982 + "]" * 982, "[" * 20_000, '{"a":' * 500 + "1" + "}" * 500, '{"type": "ping", "x": ' + "[" * 17
        + "]" * 17 + "}",
        "3", "[]", "null", '"ping"', json.dumps({"type": "nope"}), json.dumps({"kind": "ping"}),
        json.dumps({"type": 5}), json.dumps({"type": ["ping"]}),
        json.dumps({**good, "flags": "11111111"}), json.dumps({**good, "flags": [1] * 9}),
        json.dumps({**good, "mags": [2.0] * 8}), json.dumps({**good, "seq": -1}), json.dumps({**good, "seq": "1"}),
        json.dumps({**good, "t": "x"}), json.dumps({**good, "flags": [True] * 8}), json.dumps({**good, "extra": 1}),
        json.dumps({"type": "played", "frame": "3"}), json.dumps({"type": "played", "frame": -5}),
        json.dumps({"type": "start", "prompt": 5, "image": None}), '{"type": "start", "prompt": "\\ud800"}',
        json.dumps({"type": "start", "prompt": "x", "image": "data:image/png;base64,AAAA"}),
        json.dumps({"type": "start", "prompt": "x", "image": None, "steps": 10**9}),
        json.dumps(START),  # already started
        json.dumps({"type": "ping", "pad": "x" * 20_000}),  # over max_message_bytes: oversized
        b"\x00" * 64, b"\xff" * 1024, json.dumps({"type": "ping"}).encode(),  # binary frames
    ]


async def reader(ws, stats: dict) -> None:
    """Read everything a connection is sent (counting frames and errors) until it closes; note the close code."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in ws:
            if isinstance(message, bytes):
                stats["frames"] += 1
                stats["last_frame"] = int.from_bytes(message[4:8], "big")
            else:
                data = json.loads(message)
                if data.get("type") == "error":
                    stats["errors"] += 1
                elif data.get("type") == "chunk":
                    stats["chunks"].append((time.monotonic(), data["frames"]))
    except ConnectionClosed:
        pass
    stats["close"] = ws.close_code


def new_stats() -> dict:
    return {"frames": 0, "errors": 0, "chunks": [], "last_frame": -1, "close": None}


def connect(url: str):
    from websockets.asyncio.client import connect as ws_connect

    return ws_connect(url, compression=None, proxy=None, open_timeout=15, max_size=WS_LIMIT_BYTES, ping_interval=None)


async def fly(url: str, stats: dict, until: asyncio.Event, extra=None) -> None:
    """A well-behaved flight: input at 25 Hz, ``played`` at 4 Hz, until ``until`` is set; ``extra(ws)`` (a
    coroutine) runs beside it."""
    async with connect(url) as ws:
        await ws.send(json.dumps(START))
        reading = asyncio.create_task(reader(ws, stats))
        started, seq = time.monotonic(), 0

        async def report():
            nonlocal seq
            while not until.is_set() and stats["close"] is None:
                await ws.send(json.dumps(input_message(seq, (time.monotonic() - started) * 1000)))
                if seq % 6 == 0:
                    await ws.send(json.dumps({"type": "played", "frame": stats["last_frame"]}))
                seq += 1
                await asyncio.sleep(0.04)
        tasks = [asyncio.create_task(report())] + ([asyncio.create_task(extra(ws))] if extra else [])
        try:
            await asyncio.gather(*tasks)
        except Exception as error:  # a closed connection: its code says why
            stats.setdefault("send_error", repr(error))
        reading.cancel()


def frame_rate(chunks: list, start: float, end: float) -> float | None:
    """Frames per second between the first and the last chunk that arrived in [start, end)."""
    inside = [(t, n) for t, n in chunks if start <= t < end]
    if len(inside) < 3:
        return None
    return sum(n for _, n in inside[1:]) / (inside[-1][0] - inside[0][0])


async def barrage(base: str, messages: int, limits: dict, senders: int, baseline_s: float, polite_s: float,
                  min_chunks: int = 4, cap_s: float = 120.0) -> dict:
    """The barrage (see the module's doc). Each window (before, during) lasts until the viewer has had ``min_chunks``
    chunks in it (at most ``cap_s``): on a loaded machine a chunk can take seconds."""
    from websockets.exceptions import ConnectionClosed

    rate_limit, max_upload = limits["max_messages_per_s"], limits["max_upload_bytes"]
    url = base.replace("http://", "ws://") + "/ws"
    done, go = asyncio.Event(), asyncio.Event()
    viewer = new_stats()
    pool, sent = kinds(), {"malformed": 0}
    flood_pool = [m for m in pool if m != json.dumps(START)]  # only the flying sender may start (again)
    per_sender = int(rate_limit / 2 * polite_s)
    flood_left = max(0, messages - per_sender * senders)
    sender_stats = [new_stats() for _ in range(senders)]
    window = {"from": math.inf}

    def viewer_chunks(since: float) -> int:
        return sum(t >= since for t, _ in viewer["chunks"])

    async def send_malformed(ws, messages_pool):
        await go.wait()
        i = 0  # half the rate limit, for per_sender messages and until the viewer has had its chunks

        def more() -> bool:
            return viewer_chunks(window["from"]) < min_chunks and time.monotonic() - window["from"] < cap_s
        while i < per_sender or more():
            await ws.send(messages_pool[i % len(messages_pool)])
            sent["malformed"] += 1
            i += 1
            await asyncio.sleep(2.0 / rate_limit)

    async def sender(stats, flying):
        if flying:  # a flight of its own, which must go on
            stop = asyncio.Event()

            async def extra(ws):
                await send_malformed(ws, pool)
                stop.set()
            return await fly(url, stats, stop, extra)
        async with connect(url) as ws:
            reading = asyncio.create_task(reader(ws, stats))
            try:
                await send_malformed(ws, flood_pool)
            except ConnectionClosed:
                pass
            reading.cancel()

    flood = {"closes": {}, "connections": 0}

    async def flooder():
        left = flood_left
        while left > 0:
            flood["connections"] += 1
            async with connect(url) as ws:
                stats = new_stats()
                reading = asyncio.create_task(reader(ws, stats))
                try:
                    while left > 0 and stats["close"] is None:
                        await ws.send(flood_pool[left % len(flood_pool)])
                        sent["malformed"] += 1
                        left -= 1
                        if left % 50 == 0:
                            await asyncio.sleep(0)  # let the reader see the close
                    await asyncio.wait_for(asyncio.shield(reading), 1.0)
                except Exception:  # sending into a closed connection, or still open after the last message
                    pass
                code = stats["close"] if reading.done() else "open"  # open: the flood ended before the limit did
                reading.cancel()
                flood["closes"][str(code)] = flood["closes"].get(str(code), 0) + 1

    async def oversized():
        async with connect(url) as ws:
            stats = new_stats()
            reading = asyncio.create_task(reader(ws, stats))
            try:
                await ws.send("x" * (2 * max_upload + 100_000))  # beyond uvicorn's ws_max_size (4/3 of it + 72 KiB)
            except ConnectionClosed as closed:  # while it was still sending
                return closed.rcvd.code if closed.rcvd else None
            await asyncio.wait_for(reading, 15)
            return stats["close"]

    viewing = asyncio.create_task(fly(url, viewer, done))
    attack = [asyncio.create_task(sender(stats, i == 0)) for i, stats in enumerate(sender_stats)]  # quiet until `go`
    dead = await dead_client(base)
    while viewer_chunks(0) < 1 or time.monotonic() - viewer["chunks"][0][0] < 2.0:  # both flights under way
        await asyncio.sleep(0.1)
    baseline_from = time.monotonic()
    await asyncio.sleep(baseline_s)
    while viewer_chunks(baseline_from) < min_chunks and time.monotonic() - baseline_from < cap_s:
        await asyncio.sleep(0.1)
    barrage_from = window["from"] = time.monotonic()
    go.set()
    flooding = asyncio.create_task(flooder())
    too_big = await oversized()
    sent["malformed"] += 1
    await asyncio.gather(*attack, flooding)
    barrage_to = time.monotonic()
    await asyncio.sleep(1.0)
    done.set()
    await viewing
    dead_pause_s = await dead["paused_after"]
    dead["socket"].close()
    flying = sender_stats[0]
    before = frame_rate(viewer["chunks"], baseline_from, barrage_from)
    during = frame_rate(viewer["chunks"], barrage_from, barrage_to)
    return {
        "malformed_sent": sent["malformed"], "barrage_s": round(barrage_to - barrage_from, 2),
        "viewer_fps_before": round(before, 3) if before else None,
        "viewer_fps_during": round(during, 3) if during else None,
        "viewer_ratio": round(during / before, 3) if before and during else None,
        "viewer_closed": viewer["close"],
        "flying_sender": {"frames": flying["frames"], "errors": flying["errors"], "close": flying["close"],
                          "chunks_during": sum(barrage_from <= t < barrage_to for t, _ in flying["chunks"])},
        "other_senders": [{"errors": s["errors"], "close": s["close"]} for s in sender_stats[1:]],
        "flooder": {"sent": flood_left, **flood}, "oversized_close": too_big,
        "dead_client_paused_after_s": dead_pause_s,
    }


async def dead_client(base: str) -> dict:
    """A client that starts a flight, then never reads or sends again (a bare socket with a small buffer): the
    seconds until the server's ``wanfly_flights_paused`` gauge shows its flight paused (None: not in 30 s)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    payload, mask = json.dumps(START).encode(), os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    started = time.monotonic()

    async def paused_after():
        while time.monotonic() - started < 30:
            if metric(base, "wanfly_flights_paused") >= 1:
                return round(time.monotonic() - started, 2)
            await asyncio.sleep(0.1)
        return None
    return {"socket": sock, "paused_after": asyncio.create_task(paused_after())}


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


# ---- the server ------------------------------------------------------------------------------------------------
def start_server(args: list[str], log_path: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``python -m server`` on a free loopback port in a process group of its own; returns it once /readyz is 200."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
               "--log_level", "warning", "--gradio", "0", *([] if "--world" in args else ["--world", "random"]), *args]
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return process, base
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            kill_tree(process)
            raise TimeoutError(f"server not ready after {timeout} s; see {log_path}")
        time.sleep(0.2)


def kill_tree(process: subprocess.Popen) -> list[str]:
    """SIGKILL the server's process group and every descendant at once (imageio-ffmpeg starts ffmpeg in a group of
    its own; ``docker kill`` and the OOM killer take the whole container); returns the names of those killed."""
    try:
        victims = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        victims = []
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for victim in victims:
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    names = []
    for victim in victims:
        try:
            names.append(victim.name())
        except psutil.NoSuchProcess:
            names.append("?")
    gone, alive = psutil.wait_procs(victims, timeout=10)
    process.wait()
    if alive:
        raise RuntimeError(f"still alive after SIGKILL: {alive}")
    return sorted(names)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        kill_tree(process)


def log_problems(log_path: Path) -> list[str]:
    return [line for line in log_path.read_text(errors="replace").splitlines() if LOG_PROBLEMS.search(line)]


# ---- kill trials -----------------------------------------------------------------------------------------------
async def fly_until_killed(base: str, process: subprocess.Popen, seconds: float, rng: random.Random):
    """Fly with input that changes every 0.3 s; SIGKILL the server ``seconds`` after the first chunk came (or after
    120 s without one); the chunk messages received and the names of the processes killed."""
    chunks = []
    async with connect(base.replace("http://", "ws://") + "/ws") as ws:
        await ws.send(json.dumps(START))
        started, seq, first = time.monotonic(), 0, None
        flags, mags = [0] * 8, [0.0] * 8
        while (time.monotonic() - first < seconds) if first else (time.monotonic() - started < 120):
            if seq % 8 == 0:
                flags = [int(rng.random() < 0.3) for _ in range(8)]
                mags = [round(rng.uniform(0.2, 1.0), 3) if f else 0.0 for f in flags]
            await ws.send(json.dumps(input_message(seq, (time.monotonic() - started) * 1000, flags, mags)))
            await ws.send(json.dumps({"type": "played", "frame": 10**6}))  # it plays all it gets
            seq += 1
            try:
                while True:
                    message = await asyncio.wait_for(ws.recv(), 0.04)
                    if isinstance(message, str) and json.loads(message).get("type") == "chunk":
                        chunks.append(json.loads(message))
                        first = first or time.monotonic()
            except asyncio.TimeoutError:
                pass
        killed = kill_tree(process)
    return chunks, killed


def check_parts(folder: Path, received: list[dict]) -> dict:
    """The parts a kill left, against the chunks the client was sent: consistent (frames = 1 + 4 steps, all whole in
    the video), the same actions as sent, at most the last chunk sent lost; then finished as cut off."""
    parts = sorted(folder.glob("*.part.jsonl"))
    if len(parts) > 1:
        return {"ok": False, "why": f"{len(parts)} recordings in progress on disk"}
    # no part: killed before the recorder began (it starts after the first chunk went out)
    record = read_recording_part(parts[0]) if parts else {"actions": [], "frames": 0, "video_frames": 0}
    steps = len(record["actions"])
    sent = [step for chunk in received for step in chunk["actions"]]
    same = steps <= len(sent) and np.allclose(np.asarray(record["actions"]).reshape(steps, 16),
                                              np.asarray(sent[:steps]).reshape(steps, 16), atol=1e-6)
    last = len(received[-1]["actions"]) if received else 0
    result = {"steps_sent": len(sent), "steps_recorded": steps, "frames": record["frames"],
              "video_whole_frames": record["video_frames"], "lost_steps": len(sent) - steps}
    consistent = record["frames"] == (1 + 4 * steps if steps else 0) and record["video_frames"] >= record["frames"]
    ok = consistent and same and len(sent) - steps <= last
    if steps:
        recovered = recover_recordings(FileStore(folder))
        mp4 = folder / f"{parts[0].name[:-len('.part.jsonl')]}.mp4"
        finished = json.loads(mp4.with_suffix(".json").read_text()) if recovered else {}
        decoded = count_whole_frames(mp4) if mp4.is_file() else 0
        result.update(recovered_frames=decoded, cut_off=finished.get("cut_off"))
        ok = ok and decoded == record["frames"] and finished.get("cut_off") is True
    return {"ok": bool(ok), **result}


def kill_trial(process: subprocess.Popen, base: str, folder: Path, seconds: float, rng: random.Random) -> dict:
    """Fly on a running server for ``seconds``, SIGKILL its process tree, check what its recording left."""
    try:
        received, killed = asyncio.run(fly_until_killed(base, process, seconds, rng))
    finally:
        if process.poll() is None:
            kill_tree(process)
    return {"killed_after_s": round(seconds, 2), "chunks_received": len(received), "killed": killed,
            **check_parts(folder, received)}


def kill_trials(trials: int, work: Path, server_args: list[str], seed: int) -> dict:
    rng = random.Random(seed)
    results = []
    for trial in range(trials):
        folder, log_path = work / f"trial-{trial:02d}", work / f"trial-{trial:02d}.log"
        process, base = start_server(["--recordings_dir", str(folder), *server_args], log_path)
        result = {"trial": trial, **kill_trial(process, base, folder, rng.uniform(0.0, 4.0), rng),
                  "log_problems": log_problems(log_path)}
        result["ok"] = result["ok"] and not result["log_problems"]
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    served = serve_recovered(work / "trial-00", work / "served.log", server_args) if trials else None
    return {"trials": trials, "passed": sum(r["ok"] for r in results), "served_after_restart": served,
            "lost_steps": [r.get("lost_steps") for r in results], "results": results}


def serve_recovered(folder: Path, log_path: Path, server_args: list[str]) -> dict:
    """A fresh server on a killed trial's folder: its listing and downloads."""
    process, base = start_server(["--recordings_dir", str(folder), *server_args], log_path)
    try:
        with urllib.request.urlopen(base + "/recordings", timeout=10) as response:
            entries = json.loads(response.read())["recordings"]
        out = []
        for entry in entries:
            path = folder / "download.mp4"
            with urllib.request.urlopen(base + entry["video"], timeout=30) as response:
                path.write_bytes(response.read())
            out.append({"id": entry["id"], "cut_off": entry["cut_off"], "frames": entry["frames"],
                        "steps": entry["steps"], "downloaded_frames": count_whole_frames(path)})
            path.unlink()
        return {"recordings": out, "ok": bool(out) and all(e["downloaded_frames"] == e["frames"] for e in out)}
    finally:
        stop_server(process)


def run_barrage(messages: int, work: Path, server_args: list[str], senders: int, baseline_s: float,
                polite_s: float, kill_after: bool = False) -> dict:
    """The barrage on a fresh server; then, with ``kill_after``, one kill trial on the same server (else it stops)."""
    log_path, folder = work / "barrage.log", work / "barrage-recordings"
    process, base = start_server(["--max_sessions", "4", "--recordings_dir", str(folder),
                                  *server_args], log_path)
    try:
        with urllib.request.urlopen(base + "/api/config", timeout=10) as response:
            limits = json.loads(response.read())["limits"]
        result = asyncio.run(barrage(base, messages, limits, senders, baseline_s, polite_s))
        result["server_alive"] = process.poll() is None
        if kill_after:
            result["kill"] = kill_trial(process, base, folder, 3.0, random.Random(0))
    finally:
        if process.poll() is None:
            stop_server(process)
    result["log_problems"] = log_problems(log_path)
    result["ok"] = (result["server_alive"] and not result["log_problems"] and result["viewer_closed"] in (None, 1000)
                    and (result["viewer_ratio"] or 0) >= 0.9
                    and result["flying_sender"]["close"] is None and result["flying_sender"]["chunks_during"] > 0
                    and all(s["close"] is None for s in result["other_senders"])
                    and set(result["flooder"]["closes"]) <= {"1008", "open"} and result["oversized_close"] == 1009
                    and result["dead_client_paused_after_s"] is not None)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="malformed messages in the barrage (0: none)")
    parser.add_argument("--senders", type=int, default=1,
                        help="connections that send malformed messages at half the rate limit (the first one flies); "
                             "the goal is about one abusive client")
    parser.add_argument("--baseline_s", type=float, default=20.0,
                        help="the viewer's frame rate before the barrage (at least 4 of its chunks)")
    parser.add_argument("--polite_s", type=float, default=60.0,
                        help="seconds the senders send at half the rate limit; the flooder sends the rest")
    parser.add_argument("--kill_trials", type=int, default=20, help="flights ended by SIGKILL of the server (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for logs and recordings (default: a temporary folder)")
    parser.add_argument("--out", help="write the results JSON here too")
    args, server_args = parser.parse_known_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="wanfly-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"work": str(work), "server_args": server_args}
    if args.messages:
        results["barrage"] = run_barrage(args.messages, work, server_args, args.senders, args.baseline_s,
                                         args.polite_s)
    if args.kill_trials:
        results["kills"] = kill_trials(args.kill_trials, work, server_args, args.seed)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    failed = (args.messages and not results["barrage"]["ok"]) or \
        (args.kill_trials and results["kills"]["passed"] < args.kill_trials)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
