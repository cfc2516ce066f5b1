"""The proxy side. Serve's HTTP proxy wraps everything it relays in the middleware that ``proxy_middlewares()``
returns; Serve finds it through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=server.cluster.proxy:proxy_middlewares``
in the environment of the Ray nodes (``python -m server.cluster`` sets it for the local cluster it starts; a cluster
started otherwise sets it itself, see docs/cluster.md). The proxy imports this module: it stays light (no torch).

``FlightGuard``: when the replica holding a flight's WebSocket dies (its process killed, its node lost), the proxy
ends the relay without closing the socket. The guard then sends the protocol's ``error`` (``generation_failed``,
saying what happened) and closes with 1011, so the client knows the flight is over: the browser starts a new one
from its last frame, and the router sends it to a live replica. A socket the replica closed, or the client left, is
not touched; nor is anything but ``/ws``.

``InputThinner``: a browser reports its input state 25 times a second (``server.bindings.INPUT_HZ``) and at once on
every change. Each message the proxy relays costs a Ray call between the proxy and the replica (about 1 ms of CPU on
each side, measured in docs/performance.md), while a report that repeats the last one says only "still held". The
thinner relays every change at once and an unchanged state at most every ``INPUT_REFRESH_S``: the replica's input
timeline holds a state from one report to the next, for up to ``server.inputs.STALE_AFTER_S``, so the actions it
builds are the same. Anything it does not recognise as a well-formed repeat passes through, for the replica to judge.
"""
from __future__ import annotations

import json
import logging
import math
import time

from starlette.middleware import Middleware

log = logging.getLogger("wanfly.cluster.proxy")
FLIGHT_PATH = "/ws"
CLOSE_INTERNAL_ERROR = 1011
# server.protocol's Error(code="generation_failed", message=REPLICA_LOST) on the wire (tests/server/cluster check
# that it is), written out so the proxy does not import the protocol's dependencies (torch)
REPLICA_LOST = "the replica serving this flight stopped (Ray restarts it); start a new flight"
LOST_MESSAGE = {"type": "error", "code": "generation_failed", "message": REPLICA_LOST}
INPUT_REFRESH_S = 0.2  # an unchanged input state reaches the replica this often (5 times per STALE_AFTER_S)


class FlightGuard:
    def __init__(self, app, path: str = FLIGHT_PATH):
        self.app, self.path = app, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket" or scope.get("path") != self.path:
            return await self.app(scope, receive, send)
        seen = {"accepted": False, "closed": False}

        async def watched_send(message):
            if message["type"] == "websocket.accept":
                seen["accepted"] = True
            elif message["type"] == "websocket.close":
                seen["closed"] = True
            await send(message)

        async def watched_receive():
            message = await receive()
            if message["type"] == "websocket.disconnect":
                seen["closed"] = True  # the client left: nobody to tell
            return message

        try:
            await self.app(scope, watched_receive, watched_send)
        except Exception:
            if not seen["accepted"] or seen["closed"]:
                raise
            log.exception("the relay of a flight failed")
        if seen["accepted"] and not seen["closed"]:
            log.warning("a flight's replica stopped mid-flight; telling its client")
            await send({"type": "websocket.send", "text": json.dumps(LOST_MESSAGE)})
            await send({"type": "websocket.close", "code": CLOSE_INTERNAL_ERROR, "reason": "replica stopped"})


def text_body(message) -> dict | None:
    """The JSON object a client's text message carries, else None."""
    if message.get("type") != "websocket.receive" or not isinstance(message.get("text"), str):
        return None
    try:
        body = json.loads(message["text"])
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def input_report(body: dict) -> tuple | None:
    """``(state, seq, t)`` of a well-formed ``input`` message (``state``: its flags and mags), else None."""
    seq, t, flags, mags = body.get("seq"), body.get("t"), body.get("flags"), body.get("mags")
    if body.get("type") != "input" or type(seq) is not int or type(t) not in (int, float) or not math.isfinite(t):
        return None
    if not isinstance(flags, list) or not isinstance(mags, list) or len(flags) != len(mags):
        return None
    if any(type(f) is not int or f not in (0, 1) for f in flags):
        return None
    if any(type(m) not in (int, float) or not 0 <= m <= 1 for m in mags):
        return None
    return (tuple(flags), tuple(mags)), seq, t


class InputThinner:
    def __init__(self, app, path: str = FLIGHT_PATH, refresh_s: float = INPUT_REFRESH_S, clock=time.monotonic):
        self.app, self.path, self.refresh_s, self.clock = app, path, refresh_s, clock

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket" or scope.get("path") != self.path:
            return await self.app(scope, receive, send)
        last = None  # (state, seq, t, when) of the input report relayed last

        async def thinned_receive():
            nonlocal last
            while True:
                message = await receive()
                body = text_body(message)
                report = None if body is None else input_report(body)
                if report is None:
                    if body is not None and body.get("type") in ("start", "stop"):
                        last = None  # a new flight on this socket gets its first report
                    return message
                (state, seq, t), now = report, self.clock()
                if (last is not None and state == last[0] and seq > last[1] and t >= last[2]
                        and now - last[3] < self.refresh_s):
                    continue  # "still held": the replica's timeline already holds this state
                last = (state, seq, t, now)
                return message

        await self.app(scope, thinned_receive, send)


def proxy_middlewares() -> list[Middleware]:
    """Serve's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(FlightGuard), Middleware(InputThinner)]
