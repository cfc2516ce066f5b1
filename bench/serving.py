"""``python -m bench.serving [--sessions 1 --seconds 20 --sample_s S --url URL --out FILE | server options...]``.

Starts ``python -m server`` on loopback with the remaining options (or uses ``--url``), flies ``--sessions``
clients holding forward + yaw for ``--seconds``, and prints JSON: chunk generation time, frames/s delivered per
session, stalls (server count), and the server's cost per frame (JPEG encode + WebSocket send, from /metrics)
against the frame budget 1/fps. ``--jpeg_sizes`` also times simplejpeg alone at a few sizes. ``--out`` writes the
result (bench.schema); its device is the one the started server resolves (a server at ``--url``: unknown).

``--sample_s S`` also reads /metrics every S seconds during the flight: the server's chunk (a causal world: block)
time per interval, whole turns (``wanfly_chunk_seconds``) in wall time and in CPU time of its generation thread
(``wanfly_chunk_cpu_seconds_total``: the work, apart from what other processes on a shared machine take), its
resident memory and stalls (``samples``), and, for flights of two minutes or more, the first minute against the
last (``flatness``: block time, block CPU time, median RSS, and their ratios last / first; flat is near 1).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request

import numpy as np

from bench.schema import command_line, describe_device, figures_at, write_result
from server.bindings import INPUT_HZ
from server.generation.worlds import resolve_device
from server.media.images import encode_jpeg
from server.settings import Settings
from server.testing import server_process, stop_servers_on_sigterm

SERVER_DEFAULTS = ("--gradio", "0")  # and server_process's own: --threads 1, --world random unless given


def metrics(url: str, token: str | None) -> dict:
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        values = {}
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                values[name] = float(value)
        return values


async def sample(url: str, token: str | None, period: float, started: float, out: list, stop: asyncio.Event) -> None:
    """/metrics every ``period`` seconds until ``stop`` (and once more then): ``(t_s, metrics)`` into ``out``."""
    while True:
        values = await asyncio.to_thread(metrics, url, token)
        out.append((time.monotonic() - started, values))
        if stop.is_set():
            return
        try:
            await asyncio.wait_for(stop.wait(), period)
        except asyncio.TimeoutError:
            pass


def between(a: dict, b: dict) -> dict:
    """Two /metrics samples -> the chunks (blocks) made between them, their mean whole-turn wall time and mean CPU
    time of the generation thread (the work, apart from what other processes took), stalls."""
    count = b.get("wanfly_chunk_seconds_count", 0) - a.get("wanfly_chunk_seconds_count", 0)
    wall = b.get("wanfly_chunk_seconds_sum", 0) - a.get("wanfly_chunk_seconds_sum", 0)
    cpu = b.get("wanfly_chunk_cpu_seconds_total", 0) - a.get("wanfly_chunk_cpu_seconds_total", 0)
    return {"chunks": int(count), "chunk_ms_mean": round(1000 * wall / count, 2) if count else None,
            "chunk_cpu_ms_mean": round(1000 * cpu / count, 2) if count else None,
            "stalls": b.get("wanfly_stalls_total", 0) - a.get("wanfly_stalls_total", 0)}


def intervals(samples: list) -> list[dict]:
    """Consecutive /metrics samples -> per interval: its end, ``between``'s numbers, the server's RSS at the end."""
    return [{"t_s": round(t1, 1), **between(a, b),
             "rss_mb": round(b["process_resident_memory_bytes"] / 2**20, 1)
             if "process_resident_memory_bytes" in b else None}
            for (_, a), (t1, b) in zip(samples, samples[1:])]


def flatness(samples: list, window_s: float = 60.0) -> dict | None:
    """The flight's first ``window_s`` seconds against its last: ``between``'s numbers from the samples nearest the
    window's ends, the median RSS of the samples in it (the one at the flight's start, before its stream, aside),
    and the ratios last / first. None when the flight is shorter than two windows."""
    if len(samples) < 4 or samples[-1][0] - samples[0][0] < 2 * window_s:
        return None
    start, end = samples[0][0], samples[-1][0]

    def window(lo: float, hi: float) -> dict:
        a = min(samples, key=lambda s: abs(s[0] - lo))
        b = min(samples, key=lambda s: abs(s[0] - hi))
        rss = [m["process_resident_memory_bytes"] for t, m in samples[1:]
               if a[0] < t <= b[0] and "process_resident_memory_bytes" in m]
        return {"from_s": round(a[0], 1), "to_s": round(b[0], 1), **between(a[1], b[1]),
                "rss_bytes_median": round(float(np.median(rss))) if rss else None}
    first, last = window(start, start + window_s), window(end - window_s, end)

    def ratio(key):
        return round(last[key] / first[key], 4) if first[key] and last[key] else None
    return {"first_minute": first, "last_minute": last, "chunk_ms_ratio": ratio("chunk_ms_mean"),
            "chunk_cpu_ms_ratio": ratio("chunk_cpu_ms_mean"), "rss_ratio": ratio("rss_bytes_median")}


async def fly(url: str, seconds: float, token: str | None, result: dict, input_hz: float = INPUT_HZ) -> None:
    """One client holding forward + yaw, reporting its input ``input_hz`` times a second as the browser does."""
    from websockets.asyncio.client import connect
    ws_url = url.replace("http", "ws", 1) + "/ws" + (f"?token={token}" if token else "")
    async with connect(ws_url, compression=None, proxy=None, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "start", "prompt": "a drone flies over green hills", "image": None,
                                  "seed": 0}))
        ready = json.loads(await ws.recv())
        result.update(fps=ready["fps"], chunk_frames=ready["chunk_frames"], size=[ready["width"], ready["height"]],
                      gen_ms=[], frames=0, first_frame_s=None, generation=ready.get("generation"),
                      replica=ready.get("replica"))
        started = time.monotonic()
        next_input, seq = started, 0
        while (now := time.monotonic()) < started + seconds:
            if now >= next_input:
                await ws.send(json.dumps({"type": "input", "seq": seq, "t": (now - started) * 1000,
                                          "flags": [1, 0, 0, 0, 1, 0, 0, 0], "mags": [1, 0, 0, 0, 1, 0, 0, 0]}))
                seq, next_input = seq + 1, next_input + 1 / input_hz
            try:
                message = await asyncio.wait_for(ws.recv(), max(0.001, next_input - time.monotonic()))
            except asyncio.TimeoutError:
                continue
            if isinstance(message, bytes):
                result["frames"] += 1
                if result["first_frame_s"] is None:
                    result["first_frame_s"] = round(time.monotonic() - started, 3)
            elif json.loads(message)["type"] == "chunk":
                result["gen_ms"].append(json.loads(message)["gen_ms"])
        result["seconds"] = time.monotonic() - started
        await ws.send(json.dumps({"type": "stop"}))


def run(url: str, sessions: int, seconds: float, token: str | None, sample_s: float | None = None) -> dict:
    before = metrics(url, token)
    results = [{} for _ in range(sessions)]
    samples: list = []

    async def main():
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(url, token, sample_s, time.monotonic(), samples, stop)) \
            if sample_s else None
        await asyncio.gather(*(fly(url, seconds, token, r) for r in results))
        stop.set()
        if sampler is not None:
            await sampler
    asyncio.run(main())
    after = metrics(url, token)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    frames_sent = max(delta.get("wanfly_frames_sent_total", 0), 1)
    fps = results[0]["fps"]
    jpeg_ms = 1000 * delta.get("wanfly_jpeg_seconds_total", 0) / frames_sent
    send_ms = 1000 * delta.get("wanfly_send_seconds_total", 0) / frames_sent
    gen = [g for r in results for g in r["gen_ms"][1:]] or [g for r in results for g in r["gen_ms"]]
    return {
        "sessions": sessions, "fps": fps, "chunk_frames": results[0]["chunk_frames"], "size": results[0]["size"],
        "chunk_ms_median": round(statistics.median(gen), 1), "chunk_ms_p90": round(float(np.percentile(gen, 90)), 1),
        "chunks": len(gen) + sessions,
        "frames_per_s_per_session": [round(r["frames"] / r["seconds"], 2) for r in results],
        "first_frame_s": [r["first_frame_s"] for r in results],
        "server_stalls": delta.get("wanfly_stalls_total", 0),
        "frames_dropped": delta.get("wanfly_frames_dropped_total", 0),
        "server_ms_per_frame": {"jpeg": round(jpeg_ms, 4), "send": round(send_ms, 4),
                                "total": round(jpeg_ms + send_ms, 4),
                                "budget": round(1000 / fps, 2)},
        "generation": results[0].get("generation"),
        **({"samples": intervals(samples), "flatness": flatness(samples)} if sample_s else {}),
    }


def jpeg_sizes(quality: int = 85) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for width, height in ((64, 64), (128, 128), (832, 480)):
        blocks = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
        smooth = np.kron(blocks, np.ones((16, 16, 1), np.uint8))
        times = []
        for _ in range(50):
            started = time.perf_counter()
            data = encode_jpeg(np.ascontiguousarray(smooth), quality)
            times.append(time.perf_counter() - started)
        out[f"{width}x{height}"] = {"ms": round(1000 * statistics.median(times), 4), "bytes": len(data)}
    return out


def readyz(url: str) -> dict:
    with urllib.request.urlopen(url + "/readyz", timeout=10) as response:
        return json.loads(response.read().decode())


def server_device(server_args) -> dict:
    """The device a server started by ``server_process`` with these options runs on (as it resolves it)."""
    args = ["--threads", "1", *([] if "--world" in server_args else ["--world", "random"]), *server_args]
    settings = Settings.from_args(args)
    device, _ = resolve_device(settings)
    return dict(describe_device(device), threads=settings.threads or None)


def figures(report: dict) -> list[dict]:
    """The headline numbers: chunk time, frames/s and the first frame per session, stalls and drops, the
    server's cost per frame against the budget; simplejpeg alone per size; the first and last minute's block time,
    RSS and stalls and their ratios (``--sample_s``)."""
    flight = report.get("flight", {})
    sessions = range(len(flight.get("frames_per_s_per_session", [])))
    return figures_at(report, [("flight.chunk_ms_median", "ms"), ("flight.chunk_ms_p90", "ms")]
                      + [(f"flight.frames_per_s_per_session.{i}", "frames/s") for i in sessions]
                      + [(f"flight.first_frame_s.{i}", "s") for i in sessions]
                      + [("flight.server_stalls", "count"), ("flight.frames_dropped", "count")]
                      + [(f"flight.server_ms_per_frame.{key}", "ms") for key in ("jpeg", "send", "total", "budget")]
                      + [(f"jpeg_only.{size}.{key}", unit) for size in report.get("jpeg_only", {})
                         for key, unit in (("ms", "ms"), ("bytes", "bytes"))]
                      + [(f"flight.flatness.{minute}_minute.{key}", unit) for minute in ("first", "last")
                         for key, unit in (("chunk_ms_mean", "ms"), ("chunk_cpu_ms_mean", "ms"),
                                           ("rss_bytes_median", "bytes"), ("stalls", "count"))]
                      + [(f"flight.flatness.{key}", "ratio")
                         for key in ("chunk_ms_ratio", "chunk_cpu_ms_ratio", "rss_ratio")])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running server (default: start one with the other options)")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--token", default=None)
    parser.add_argument("--jpeg_sizes", action="store_true")
    parser.add_argument("--sample_s", type=float, default=None,
                        help="read /metrics every S seconds: block time and RSS over the flight (flatness)")
    parser.add_argument("--out", default=None, help="write the result (bench.schema) here")
    args, server_args = parser.parse_known_args(argv)
    stop_servers_on_sigterm()  # a server it starts stops with it
    report = {}
    if args.jpeg_sizes:
        report["jpeg_only"] = jpeg_sizes()
    if args.url:
        world = readyz(args.url).get("world")
        report["flight"] = run(args.url, args.sessions, args.seconds, args.token, args.sample_s)
        device = {"name": f"the server at {args.url}", "kind": "unknown", "count": None}
    else:
        device = server_device([*SERVER_DEFAULTS, *server_args])
        with server_process(*SERVER_DEFAULTS, *server_args) as url:
            world = readyz(url).get("world")
            report["flight"] = run(url, args.sessions, args.seconds, args.token, args.sample_s)
    print(json.dumps(report, indent=1))
    settings = {"sessions": args.sessions, "seconds": args.seconds, "sample_s": args.sample_s, "url": args.url,
                "server_args": None if args.url else [*SERVER_DEFAULTS, *server_args], "world": world}
    write_result(args.out, "serving", settings, figures(report), device, details=report,
                 command=command_line("bench.serving", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
