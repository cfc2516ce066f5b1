"""Who may talk to the server, and how much: the Host allow-list, the Origin check and the per-connection message
rate limit.

- **Host** (DNS rebinding: a page of ``evil.example`` whose name is re-pointed at this machine makes the browser send
  ``Host: evil.example``): every HTTP request and WebSocket handshake must name a host the server answers to:
  ``localhost``, the address it is bound to (``--host``), a name in ``--allowed_hosts``, or an IP address (a
  rebinding needs a name; an IP Host is the page's own origin). ``--allowed_hosts '*'`` turns the check off.
  Refused: HTTP 400, a WebSocket handshake 403.
- **Origin**: a browser's WebSocket handshake, and a browser's REST write (any method but GET, HEAD, OPTIONS), must
  come from the server's own origin (``Origin`` host equals ``Host``) or one in ``--allowed_origins`` (``*``: any).
  Requests without ``Origin`` are not from a browser page and pass. Refused: HTTP 403, a WebSocket handshake 403.
- **Message rate** (``MessageLimit``, one per WebSocket): token buckets of messages and bytes; what is over the limit
  is dropped, and a client that keeps going is closed (docs/protocol.md, "Rate limit").
"""
from __future__ import annotations

import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.websockets import WebSocketClose

log = logging.getLogger("wanfly.guard")
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CLOSE_POLICY = 1008


def host_name(host: str) -> str:
    """The name of a ``Host`` header value, lower case, without port or IPv6 brackets (``[::1]:80`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_host_names(bound: str, extra: list[str]) -> set[str] | None:
    """The names a Host may carry (IP addresses aside); None: any (``*`` in ``extra``)."""
    if "*" in extra:
        return None
    names = {*LOCAL_NAMES, *(host_name(name) for name in extra)}
    if bound not in WILDCARD_HOSTS:
        names.add(host_name(bound))
    return names


def host_allowed(host: str | None, names: set[str] | None) -> bool:
    if names is None:
        return True
    if not host:
        return False
    name = host_name(host)
    return name in names or is_ip(name)


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """``Origin`` absent (not a browser), in ``allowed`` (``*``: any), or the server's own (its host is ``Host``)."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == host.strip().lower()


class GuardMiddleware:
    """Pure ASGI, outermost: the Host allow-list for HTTP and WebSocket alike, the Origin check for WebSocket
    handshakes and browser REST writes."""

    def __init__(self, app, host: str, allowed_hosts: list[str], allowed_origins: list[str], metrics=None):
        self.app, self.metrics = app, metrics
        self.names = allowed_host_names(host, allowed_hosts)
        self.allowed_origins = allowed_origins

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host, origin = headers.get("host"), headers.get("origin")
        problem = None
        if not host_allowed(host, self.names):
            problem, status = f"Host {host!r} is not allowed; see --allowed_hosts", 400
        elif (scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS) and \
                not origin_allowed(origin, host, self.allowed_origins):
            problem, status = f"Origin {origin!r} is not allowed; see --allowed_origins", 403
        if problem is None:
            return await self.app(scope, receive, send)
        if self.metrics is not None:
            self.metrics.inc("wanfly_errors_total", code="host" if status == 400 else "origin")
        log.info("refused %s %s: %s", scope["type"], scope["path"], problem)
        if scope["type"] == "websocket":  # before accept: uvicorn answers the handshake with 403
            return await WebSocketClose(code=CLOSE_POLICY, reason=problem[:120])(scope, receive, send)
        return await JSONResponse({"detail": problem}, status_code=status)(scope, receive, send)


# ---- the message rate limit ---------------------------------------------------------------------------------------
@dataclass
class TokenBucket:
    rate: float  # tokens per second
    capacity: float
    tokens: float = math.nan  # nan: full
    stamp: float = math.nan

    def refill(self, now: float) -> None:
        if math.isnan(self.tokens):
            self.tokens, self.stamp = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now


class MessageLimit:
    """One connection's budget: ``per_s`` messages a second (bursts of ``BURST_S`` seconds' worth) and
    ``per_s * unit_bytes`` bytes a second (bursts of ``burst_bytes``: a start message with the largest image, twice).

    ``check(size)`` -> ``"ok"`` (handle it), ``"drop"`` (over the limit: ignore it) or ``"close"``: the client has
    had ``BURST_S`` seconds' worth of messages dropped (a dropped message counts ``1 + size // unit_bytes``, so huge
    ones count more; the count decays by a tenth of ``per_s`` a second)."""
    BURST_S = 2.0

    def __init__(self, per_s: float, unit_bytes: int, burst_bytes: int, clock=time.monotonic):
        self.unit_bytes, self.clock = unit_bytes, clock
        self.messages = TokenBucket(per_s, per_s * self.BURST_S)
        self.bytes = TokenBucket(per_s * unit_bytes, max(burst_bytes, per_s * unit_bytes * self.BURST_S))
        self.patience = TokenBucket(per_s / 10, per_s * self.BURST_S)
        self.dropped = 0
        self._warned_at = -math.inf

    def check(self, size: int) -> str:
        now = self.clock()
        for bucket in (self.messages, self.bytes, self.patience):
            bucket.refill(now)
        if self.messages.tokens >= 1 and self.bytes.tokens >= size:
            self.messages.tokens -= 1
            self.bytes.tokens -= size
            return "ok"
        self.dropped += 1
        self.patience.tokens -= 1 + size // self.unit_bytes
        return "drop" if self.patience.tokens >= 0 else "close"

    def warn_now(self) -> bool:
        """True at most once a second: when to tell the client its messages are being dropped."""
        now = self.clock()
        if now - self._warned_at < 1.0:
            return False
        self._warned_at = now
        return True
