"""Server fixtures: the random world (tiny preset, 64x64, 9-frame chunks, 2 steps) shared by in-process apps."""
import base64
import dataclasses
import io
import json
import threading
import time
from urllib.parse import urljoin

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.generation.generators import PipelineGenerator, warm_up
from server.generation.worlds import load_world
from server.settings import Settings


class LocalClient(TestClient):
    """A TestClient whose requests and WebSocket handshakes name ``Host: localhost`` (one the server answers to;
    starlette's default, ``testserver``, is refused by the Host allow-list)."""

    def __init__(self, app, **kwargs):
        super().__init__(app, base_url="http://localhost", **kwargs)

    def websocket_connect(self, url: str, *args, **kwargs):
        return super().websocket_connect(urljoin("ws://localhost", url), *args, **kwargs)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """load_world sets torch's thread count for the process (as the server wants); give other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def random_world():
    threads = torch.get_num_threads()
    world = load_world(Settings(world="random", gradio=False))
    warm_up(PipelineGenerator(world))
    torch.set_num_threads(threads)
    return world


@pytest.fixture(scope="session")
def causal_world(random_world):
    """The random world generating causally: one stream per flight, blocks of 4 frames (5 in the first)."""
    return dataclasses.replace(random_world, generation="causal", chunk_frames=5)


@pytest.fixture
def make_client(random_world, tmp_path):
    """``make_client(world_overrides={...}, **settings)`` -> a started TestClient on the shared world.
    Torch runs on one thread meanwhile, as the server does on 2 cores (the event loop needs the other)."""
    clients = []
    torch.set_num_threads(1)

    def make(world_overrides=None, **overrides):
        overrides.setdefault("gradio", False)
        overrides.setdefault("recordings_dir", str(tmp_path / "recordings"))
        world = dataclasses.replace(random_world, **(world_overrides or {}))
        client = LocalClient(create_app(Settings(**overrides), world=world))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


class InputPump:
    """Sends the held input state at ~25 Hz from a thread (the browser's report loop), with real client times."""

    def __init__(self, ws, hz: float = 25.0):
        self.ws, self.period = ws, 1.0 / hz
        self.flags, self.mags = [0] * 8, [0.0] * 8
        self.seq = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def hold(self, mags: dict):
        """``{index: magnitude 0..1}``; returns the seq of the first sample with the new state."""
        with self.lock:
            self.flags = [1 if i in mags else 0 for i in range(8)]
            self.mags = [float(mags.get(i, 0.0)) for i in range(8)]
            return self.seq

    def run(self):
        while not self.stopped.is_set():
            with self.lock:
                message = {"type": "input", "seq": self.seq, "t": time.monotonic() * 1000,
                           "flags": self.flags, "mags": self.mags}
                self.seq += 1
                self.ws.send_text(json.dumps(message))
            self.stopped.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()


@pytest.fixture
def input_pump():
    return InputPump


@pytest.fixture(scope="session")
def png_url() -> str:
    """An 80x48 PNG as a data URL (not the world's size: the server crops and resizes)."""
    buffer = io.BytesIO()
    Image.new("RGB", (80, 48), (10, 200, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
