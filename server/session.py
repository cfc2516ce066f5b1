"""One ``Connection`` per WebSocket: validates client messages, runs a flight on the engine, and sends through its own
bounded send queue.

Send path: engine threads call ``notify`` with a typed event (``server.media.delivery.FlightEvent``; never blocks:
``call_soon_threadsafe``) -> ``_on_event`` queues JSON messages (``server.protocol`` models, serialised by
``to_wire``) and binary frames -> one sender task sends them, each send bounded by ``send_timeout_s``. When more than
``send_queue_frames`` frames wait, the oldest frames are dropped (counted); a send that times out closes the
connection. Whatever happens, ``finally`` removes the flight from the engine; a transport that is already gone
(``TRANSPORT_GONE``) just ends the loop that met it.

Receive path: every message passes the connection's rate limit (``server.guard.MessageLimit``) before it is parsed.
A watcher pauses the flight (the engine gives it no turn) while its client shows no sign of playing for
``--client_timeout_s``: the playback position it reports (``played``) stuck with frames unplayed, or, for a client
that never reports it, no message at all; it resumes at the next sign.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque

import anyio
from starlette.websockets import WebSocketDisconnect

from models.action_format import ACTION_NAMES
from models.media import fit_image
from server.generation.engine import EngineFull
from server.generation.flight import ChunkFrames, Flight, FlightEvent, MoreFrames
from server.guard import CLOSE_POLICY, MessageLimit
from server.inputs import InputTimeline
from server.media.images import decode_data_url, load_sample
from server.protocol import (
    FRAME_HEADER,
    Error,
    ErrorCode,
    Input,
    Ping,
    Played,
    Pong,
    ProtocolError,
    Queue,
    Ready,
    Recording,
    ServerModel,
    Start,
    Stop,
    parse_client_message,
    to_wire,
)

log = logging.getLogger("wanfly.session")
MAX_PENDING_MESSAGES = 512  # JSON messages waiting to be sent; beyond it the client is not reading at all
CLOSE_TRY_AGAIN_LATER = 1013
# What sending or receiving raises once the client is gone (a disconnect, uvicorn's keepalive closing the socket, a
# send after the close): the connection ends quietly, never with an unhandled exception.
TRANSPORT_GONE = (WebSocketDisconnect, RuntimeError, OSError)


class Connection:
    def __init__(self, websocket, state):
        self.ws, self.state = websocket, state
        self.settings, self.metrics = state.settings, state.metrics
        self.loop = asyncio.get_running_loop()
        self.items: deque = deque()  # (kind, payload): kind in json (a to_wire dict), bytes, close
        self.frames_queued = 0
        self.messages_queued = 0
        self.frames_dropped = 0
        self.wakeup = asyncio.Event()
        self.flight: Flight | None = None
        self.done = False
        s = self.settings
        self.limit = MessageLimit(s.max_messages_per_s, s.max_message_bytes, 2 * s.ws_max_size)
        self.played: int | None = None  # the client's reported playback position (None: it does not report one)
        self.last_sent = -1  # global index of the last frame sent
        self.alive_at = time.monotonic()  # the last sign that the client plays (or, if it reports nothing, talks)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.metrics.set("wanfly_connections", self.metrics.value("wanfly_connections") + 1)
        try:
            async with anyio.create_task_group() as group:
                async def until_done(loop):
                    try:
                        await loop()
                    finally:
                        group.cancel_scope.cancel()  # either loop ending ends the connection
                group.start_soon(until_done, self._receive_loop)
                group.start_soon(until_done, self._send_loop)
                group.start_soon(until_done, self._watch_loop)
        finally:
            self.done = True
            if self.flight is not None:
                self.state.engine.remove_flight(self.flight)
                self.flight = None
            self.items.clear()
            self.metrics.set("wanfly_connections", self.metrics.value("wanfly_connections") - 1)

    def notify(self, event: FlightEvent) -> None:
        """Called from engine threads; never blocks."""
        if self.done:
            return
        try:
            self.loop.call_soon_threadsafe(self._on_event, event)
        except RuntimeError:  # the loop is closed: the connection is gone
            pass

    # ---- sending -------------------------------------------------------------------------------------------
    def _push(self, kind: str, payload) -> None:
        if self.done:
            return
        self.items.append((kind, payload))
        if kind == "bytes":
            self.frames_queued += 1
            while self.frames_queued > self.settings.send_queue_frames:
                self._drop_oldest_frame()
        else:
            self.messages_queued += 1
            if self.messages_queued > MAX_PENDING_MESSAGES:
                return self.close(CLOSE_POLICY, "client is not reading")
        self.wakeup.set()

    def close(self, code: int, reason: str) -> None:
        """Close now: whatever is queued is dropped, the sender closes the socket next."""
        self.items.clear()
        self.frames_queued = self.messages_queued = 0
        self.items.append(("close", (code, reason)))
        self.wakeup.set()

    def _drop_oldest_frame(self) -> None:
        for i, (kind, _) in enumerate(self.items):
            if kind == "bytes":
                del self.items[i]
                self.frames_queued -= 1
                self.frames_dropped += 1
                self.metrics.inc("wanfly_frames_dropped_total")
                return

    def send(self, message: ServerModel) -> None:
        self._push("json", to_wire(message))

    def error(self, code: ErrorCode, message: str) -> None:
        self.metrics.inc("wanfly_errors_total", code=code)
        self.send(Error(code=code, message=message))

    async def _send_loop(self) -> None:
        timeout = self.settings.send_timeout_s
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.items:
                kind, payload = self.items.popleft()
                try:
                    if kind == "close":
                        with anyio.move_on_after(timeout):
                            await self.ws.close(code=payload[0], reason=payload[1])
                        return
                    if kind == "bytes":
                        self.frames_queued -= 1
                        send = self.ws.send_bytes(payload)
                    else:
                        self.messages_queued -= 1  # ASCII JSON: an echoed lone surrogate cannot break the send
                        send = self.ws.send_text(json.dumps(payload, separators=(",", ":")))
                    started = time.perf_counter()
                    with anyio.move_on_after(timeout) as deadline:
                        await send
                except TRANSPORT_GONE as gone:
                    log.debug("connection gone while sending: %r", gone)
                    return
                if deadline.cancelled_caught:
                    self.metrics.inc("wanfly_slow_clients_closed_total")
                    log.warning("closing a connection: a send blocked for %.1f s", timeout)
                    return
                if kind == "bytes":
                    self._sent(FRAME_HEADER.unpack_from(payload)[1])
                    self.metrics.inc("wanfly_frames_sent_total")
                    self.metrics.inc("wanfly_send_seconds_total", time.perf_counter() - started)

    def _sent(self, frame: int) -> None:
        if self.played is not None and self.played >= self.last_sent:  # it had played everything: it waited for us
            self.alive_at = time.monotonic()
        self.last_sent = max(self.last_sent, frame)

    def _on_event(self, event: FlightEvent) -> None:
        if isinstance(event, ChunkFrames):
            self.send(event.chunk)
            for message in event.frames:
                self._push("bytes", message)
        elif isinstance(event, MoreFrames):  # later frame groups of a streamed chunk, as the VAE decodes them
            for message in event.frames:
                self._push("bytes", message)
        elif isinstance(event, (Queue, Recording)):
            if isinstance(event, Queue):  # in the waiting line there was nothing to play: the clock starts again
                self.alive_at = time.monotonic()
            self.send(event)
        elif isinstance(event, Error):
            self.error(event.code, event.message)
            if self.flight is not None and self.flight.stopped:
                self.flight = None

    # ---- receiving -----------------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            message = None
            with anyio.move_on_after(self.settings.idle_timeout_s):
                try:
                    message = await self.ws.receive()
                except TRANSPORT_GONE as gone:
                    log.debug("connection gone while receiving: %r", gone)
                    return
            if message is None:
                self.close(1000, "idle")
                return await anyio.sleep_forever()  # the sender closes; run() ends with it
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            raw = raw if raw is not None else message.get("bytes")
            verdict = self._admit(raw)
            if verdict == "close":
                return await anyio.sleep_forever()  # the sender closes; run() ends with it
            if verdict == "drop":
                continue
            if self.played is None:
                self.alive_at = time.monotonic()
            try:
                await self._handle(raw)
            except ProtocolError as problem:
                self.error(problem.code, problem.message)

    def _admit(self, raw) -> str:
        """The rate limit: "ok", "drop" (the client hears of it once a second) or, when dropping has gone on too
        long, "close" (queued)."""
        verdict = self.limit.check(len(raw) if raw is not None else 0)
        if verdict == "ok":
            return verdict
        self.metrics.inc("wanfly_messages_dropped_total")
        if verdict == "close":
            log.info("closing a connection: over the message rate limit (%d messages dropped)", self.limit.dropped)
            self.metrics.inc("wanfly_errors_total", code="rate_limited")
            self.close(CLOSE_POLICY, "message rate limit")
        elif self.limit.warn_now():
            self.error("rate_limited", f"more than {self.settings.max_messages_per_s:g} messages a second: "
                                       f"{self.limit.dropped} dropped so far; if it goes on, the connection closes")
        return verdict

    # ---- a client that stopped playing -------------------------------------------------------------------------
    async def _watch_loop(self) -> None:
        timeout = self.settings.client_timeout_s
        if timeout <= 0:
            return await anyio.sleep_forever()
        while True:
            await anyio.sleep(min(0.25, timeout / 4))
            flight = self.flight
            if flight is None or flight.stopped:
                continue
            now = time.monotonic()
            if self.played is not None and self.played >= self.last_sent:
                self.alive_at = now  # it has played everything sent: nothing to wait for
            stalled = now - self.alive_at > timeout
            if stalled != flight.paused:
                self.state.engine.pause_flight(flight, stalled)
                if stalled:
                    self.metrics.inc("wanfly_flights_paused_total")
                    log.info("pausing flight %s: its client showed no sign of playing for %.1f s", flight.id,
                             now - self.alive_at)

    async def _handle(self, raw) -> None:
        s = self.settings
        message = parse_client_message(raw, s.max_message_bytes, s.ws_max_size, s.max_prompt_chars, s.max_steps)
        if isinstance(message, Input):
            if self.flight is None:
                raise ProtocolError("not_started", "input before start: send a start message first")
            try:
                self.flight.timeline.add(message.seq, message.t, message.flags, message.mags)
            except ValueError as problem:
                raise ProtocolError("bad_field", str(problem)) from None
        elif isinstance(message, Start):
            await self._start(message)
        elif isinstance(message, Stop):
            if self.flight is None:
                raise ProtocolError("not_started", "stop without a flight")
            self.state.engine.finish_flight(self.flight)
            self.flight = None
        elif isinstance(message, Ping):
            self.send(Pong())
        elif isinstance(message, Played):
            if message.frame > (-1 if self.played is None else self.played):
                self.alive_at = time.monotonic()
            self.played = max(message.frame, -1 if self.played is None else self.played)

    async def _start(self, message: Start) -> None:
        if self.flight is not None:
            raise ProtocolError("already_started", "a flight is running on this connection; send stop first")
        if not self.state.ready:
            raise ProtocolError("not_ready", "the model is still loading; try again shortly (see /readyz)")
        world = self.state.world
        try:
            image = await asyncio.to_thread(self._first_frame, message, world)
        except ValueError as problem:
            raise ProtocolError("bad_image", str(problem)) from None
        seed = message.seed if message.seed is not None else secrets.randbelow(2**31)
        steps = message.steps or world.steps
        flight = Flight(prompt=message.prompt, image=image, seed=seed, steps=steps,
                        timeline=InputTimeline(world.full_scale, world.fps), notify=self.notify, stream=True,
                        meta={"weights": world.weights, "world": world.name, "width": world.width,
                              "height": world.height, "chunk_frames": world.chunk_frames,
                              "cfg_scale": world.cfg_scale, "actions_names": list(ACTION_NAMES),
                              "generation": world.generation, **causal_meta(world)})
        try:
            position = self.state.engine.add_flight(flight)
        except EngineFull as full:
            self.error("busy", f"{full}; try again later")
            self._push("close", (CLOSE_TRY_AGAIN_LATER, "server full"))
            return
        self.flight = flight
        self.played, self.last_sent, self.alive_at = None, -1, time.monotonic()
        self.send(Ready(session=flight.id, fps=world.fps, chunk_frames=world.chunk_frames, actions=list(ACTION_NAMES),
                        weights=world.weights, random_weights=world.random_weights, width=world.width,
                        height=world.height, seed=seed, steps=steps, full_scale=list(world.full_scale),
                        generation=world.generation, replica=self.state.replica))
        if position:
            self.send(Queue(position=position))

    def _first_frame(self, message: Start, world):
        s = self.settings
        if message.image is not None:
            image = decode_data_url(message.image, s.max_upload_bytes, s.max_image_pixels)
        else:
            image = load_sample(s.web_dir, message.sample or world.sample)
        return fit_image(image, world.width, world.height)


def causal_meta(world) -> dict:
    """A causal world's stream settings, for the recording."""
    if not world.causal:
        return {}
    c = world.causal_settings
    return {"block_frames": c.block_frames, "window": c.window, "sink": c.sink}
