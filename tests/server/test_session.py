"""server.session.Connection with a WebSocket stand-in that stops reading (narrow unit test of the send path):
frames beyond the bounded queue are dropped, a send blocked past the timeout closes the connection, and the
flight is removed from the engine. The real transport is covered in test_server_uvicorn.py."""
import asyncio
import time
from types import SimpleNamespace

from server.metrics import Metrics
from server.session import Connection
from server.settings import Settings


class StalledSocket:
    """Accepts JSON, blocks forever on the first binary frame, never sends anything."""

    def __init__(self):
        self.json, self.bytes_started = [], 0

    async def receive(self):
        await asyncio.sleep(3600)

    async def send_json(self, message):
        self.json.append(message)

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
        connection.flight = flight = object()
        for index in range(3):  # three chunks of 8 frames arrive while the first send is stuck
            connection.notify(("chunk", {"type": "chunk", "index": index, "frames": 8}, [b"jpeg"] * 8))
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
