"""Fly a world in a real browser and keep what it showed: ``python scripts/capture_flight.py --out docs/flight``.

Starts ``python -m server`` (the toy world by default; options this script does not know go to the server, e.g.
``--generation causal``) on loopback, opens the UI in headless Chromium (Playwright, /usr/bin/chromium), holds a
fixed key sequence (W, A, arrow left, arrow up, ...) on the player, then, with ``--presses N``, presses N keys more
(at random moments, so they fall at every phase of a chunk, each held until the UI has measured it) and writes to
OUT:
    sheet.png        the player canvas every --every seconds, a row per key held, labelled
    flight.mp4       the server's recording of the flight (the frames the browser was sent)
    flight.json      the recording's actions per chunk + the key timeline + the measured numbers below
Measured: chunk generation time (``gen_ms`` of every chunk message), frames shown per second in the browser,
stalls (the browser's player and the server's count), key-to-screen latency (the UI's own measure: key down to the
first frame drawn of the first chunk whose actions have that key; median, p90, max); printed and stored in
flight.json. Needs the ``dev`` extra (playwright).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from server.testing import server_process, stop_servers_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
# (label, key codes held together, seconds)
SEQUENCE = (("W: forward", ("KeyW",), 4.0), ("A: left", ("KeyA",), 4.0), ("Left arrow: yaw left", ("ArrowLeft",), 4.0),
            ("Right arrow: yaw right", ("ArrowRight",), 4.0), ("Up arrow: pitch up", ("ArrowUp",), 4.0),
            ("S: back", ("KeyS",), 4.0))
PRESS_KEYS = ("KeyW", "KeyA", "ArrowLeft", "KeyD", "ArrowRight", "KeyS", "ArrowUp", "ArrowDown")
TIMEOUT_MS = 120_000


def canvas_png(page) -> bytes:
    return page.locator("#player").screenshot()


def fly(page, base_url: str, every: float) -> tuple[list[tuple[str, list[bytes]]], list[dict]]:
    """Hold each key of SEQUENCE in turn; per step the canvas captures and the key timeline."""
    page.goto(base_url + "/")
    page.wait_for_selector("#start:not([disabled])", timeout=TIMEOUT_MS)
    page.click("#start")
    page.wait_for_function("window.wanfly.flying && window.wanfly.player.shown > 0", timeout=TIMEOUT_MS)
    page.wait_for_timeout(1500)  # the first chunk plays before any key
    shown_before = page.evaluate("window.wanfly.player.shown")
    rows, timeline = [], []
    began = time.monotonic()
    for label, keys, seconds in SEQUENCE:
        for key in keys:
            page.keyboard.down(key)
        timeline.append({"label": label, "keys": list(keys), "t_s": round(time.monotonic() - began, 3)})
        shots, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            shots.append(canvas_png(page))
            page.wait_for_timeout(int(every * 1000))
        for key in keys:
            page.keyboard.up(key)
        rows.append((label, shots))
    timeline.append({"label": "end", "keys": [], "t_s": round(time.monotonic() - began, 3),
                     "frames_shown_while_flying": page.evaluate("window.wanfly.player.shown") - shown_before})
    return rows, timeline


def press(page, count: int, seed: int = 0) -> list[dict]:
    """``count`` single key presses after random 0.4-1.0 s pauses (so they fall at every phase of a chunk), each
    held until the UI has measured it (its key-to-screen latency; a key released sooner would not be measured, which
    would leave out the slow ones) or 5 s, then 0-0.3 s more."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    rng, presses = random.Random(seed), []
    for i in range(count):
        page.wait_for_timeout(int(rng.uniform(400, 1000)))
        key, measured = PRESS_KEYS[i % len(PRESS_KEYS)], page.evaluate("window.wanfly.latencies.length")
        page.keyboard.down(key)
        try:
            page.wait_for_function(f"window.wanfly.latencies.length > {measured}", timeout=5000)
            shown = True
        except PlaywrightTimeout:
            shown = False
        page.wait_for_timeout(int(rng.uniform(0, 300)))
        page.keyboard.up(key)
        presses.append({"key": key, "shown_within_5_s": shown})
    return presses


def server_stalls(base_url: str) -> float:
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("wanfly_stalls_total "):
                return float(line.split()[1])
    return 0.0


def summary(values: list) -> dict:
    if not values:
        return {"count": 0}
    return {"count": len(values), "median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "max": float(max(values)), "min": float(min(values))}


def contact_sheet(rows, path: Path, tile: int = 160) -> None:
    """One row of canvas captures per key (each ``tile`` pixels wide), its label on the left."""


    images = [[Image.open(io.BytesIO(png)).convert("RGB") for png in shots] for _, shots in rows]
    width, height = images[0][0].size
    width, height = tile, max(1, round(height * tile / width))
    columns, label_w, pad = max(len(r) for r in images), 170, 4
    sheet = Image.new("RGB", (label_w + columns * (width + pad), len(rows) * (height + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, ((label, _), row) in enumerate(zip(rows, images)):
        y = r * (height + pad)
        draw.text((6, y + height // 2 - 6), label, fill="black")
        for c, image in enumerate(row):
            sheet.paste(image.resize((width, height), Image.BILINEAR), (label_w + c * (width + pad), y))
    sheet.save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/capture_flight.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "flight"), help="output folder")
    parser.add_argument("--world", default="toy", help="server --world (toy, random or a folder)")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between canvas captures")
    parser.add_argument("--threads", type=int, default=1,
                        help="server torch threads (1: what python -m server uses on 2 cores, all but one; the browser "
                             "gets the other)")
    parser.add_argument("--presses", type=int, default=0, help="key presses at random moments after the sequence")
    args, server_args = parser.parse_known_args(argv)
    stop_servers_on_sigterm()  # a server it starts stops with it
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with server_process("--world", args.world, "--gradio", "0", *server_args, threads=args.threads,
                        log_path=out / "server.log") as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        gen_ms = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: record_gen(payload, gen_ms)))
        stalls_before = server_stalls(base_url)
        rows, timeline = fly(page, base_url, args.every)
        presses = press(page, args.presses)
        stats = page.evaluate("({shown: window.wanfly.player.shown, stalls: window.wanfly.player.stalls, "
                              "latencies: window.wanfly.latencies, world: document.getElementById('banner')"
                              ".innerText})")
        stats["server_stalls"] = server_stalls(base_url) - stalls_before
        page.screenshot(path=str(out / "page.png"))
        page.click("#stop")
        link = page.wait_for_selector("#rec-video", timeout=TIMEOUT_MS)
        (out / "flight.mp4").write_bytes(page.request.get(base_url + link.get_attribute("href")).body())
        record = page.request.get(base_url + page.get_attribute("#rec-actions", "href")).json()
        browser.close()
    contact_sheet(rows, out / "sheet.png")
    numbers = {"world": args.world, "server_args": server_args, "server_threads": args.threads,
               "generation": record.get("generation"), "chunks": len(gen_ms),
               "chunk_gen_ms_median": statistics.median(gen_ms) if gen_ms else None,
               "frames_shown": stats["shown"], "seconds_flown_with_keys": timeline[-1]["t_s"],
               "shown_fps": round(timeline[-1]["frames_shown_while_flying"] / timeline[-1]["t_s"], 2),
               "stalls": stats["stalls"], "server_stalls": stats["server_stalls"],
               "key_to_screen_ms": stats["latencies"], "key_to_screen_summary_ms": summary(stats["latencies"]),
               "presses": len(presses), "presses_not_shown_within_5_s": sum(not p["shown_within_5_s"] for p in presses),
               "banner": stats["world"]}
    (out / "flight.json").write_text(json.dumps({"numbers": numbers, "keys": timeline, "presses": presses,
                                                 "recording": record}, indent=1))
    print(json.dumps(numbers, indent=1))
    return 0


def record_gen(payload, gen_ms: list) -> None:
    """Keep the ``gen_ms`` of chunk messages (text frames); binary frames are JPEGs."""
    if isinstance(payload, str) and '"chunk"' in payload:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if message.get("type") == "chunk" and message.get("gen_ms") is not None:
            gen_ms.append(float(message["gen_ms"]))


if __name__ == "__main__":
    raise SystemExit(main())
