"""The proxy side. Serve's HTTP proxy wraps everything it relays in the middleware that ``proxy_middlewares()``
returns; Serve finds it through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=server.cluster.proxy:proxy_middlewares``
in the environment of the Ray nodes (``python -m server.cluster`` sets it for the local cluster it starts; a cluster
started otherwise sets it itself, see docs/cluster.md). The proxy imports this module: it stays light (no torch).

``FlightGuard``: when the replica holding a flight's WebSocket dies (its process killed, its node lost), the proxy
ends the relay without closing the socket. The guard then sends the protocol's ``error`` (``generation_failed``,
saying what happened) and closes with 1011, so the client knows the flight is over: the browser starts a new one
from its last frame, and the router sends it to a live replica. A socket the replica closed, or the client left, is
not touched; nor is anything but ``/ws``.
"""
from __future__ import annotations

import json
import logging

from starlette.middleware import Middleware

log = logging.getLogger("wanfly.cluster.proxy")
FLIGHT_PATH = "/ws"
CLOSE_INTERNAL_ERROR = 1011
# server.protocol's Error(code="generation_failed", message=REPLICA_LOST) on the wire (tests/server/cluster check
# that it is), written out so the proxy does not import the protocol's dependencies (torch)
REPLICA_LOST = "the replica serving this flight stopped (Ray restarts it); start a new flight"
LOST_MESSAGE = {"type": "error", "code": "generation_failed", "message": REPLICA_LOST}


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


def proxy_middlewares() -> list[Middleware]:
    """Serve's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(FlightGuard)]
