"""server.generation.streams: the just-in-time pacing lead, one stream's measured memory (tiny preset, real stream)
and the max_sessions it gives."""
import dataclasses
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from server.generation.generators import PipelineGenerator
from server.generation.streams import (
    MEMORY_SHARE,
    Pacer,
    StreamCost,
    block_play_s,
    derive_max_sessions,
    free_memory,
    measure_stream,
    stream_state_bytes,
    tensor_bytes,
)


def test_pacer_lead_is_the_slowest_recent_block_plus_the_turns_before_it_plus_the_margin():
    pacer = Pacer(block_play_s=0.5, margin_s=0.1, recent=3)
    assert pacer.lead() == 0.5  # nothing measured: one block of playback ahead, as chunks
    for first, turn in ((0.15, 0.18), (0.2, 0.25), (0.12, 0.14)):
        pacer.observe(first, turn)
    assert pacer.lead() == pytest.approx(0.2 + 0.1)
    assert pacer.lead(others=2) == pytest.approx(0.2 + 2 * 0.25 + 0.1)  # two other flights may go first
    for _ in range(3):  # a slow block leaves the estimate once 3 newer ones are measured
        pacer.observe(0.1, 0.12)
    assert pacer.lead(others=1) == pytest.approx(0.1 + 0.12 + 0.1)


def test_max_sessions_from_memory_realtime_and_cap():
    mib = 2**20
    cost = StreamCost(bytes=100 * mib, source="test", block_s=0.1)
    assert derive_max_sessions(cost, free=int(450 * mib / MEMORY_SHARE), block_play_s=1.0, cap=8)[0] == 4  # memory
    assert derive_max_sessions(cost, free=100 * 1024 * mib, block_play_s=0.35, cap=8)[0] == 3  # real time
    sessions, why = derive_max_sessions(cost, free=100 * 1024 * mib, block_play_s=10.0, cap=8)
    assert sessions == 8 and "cap 8" in why and "100.0 MiB" in why
    assert derive_max_sessions(cost, free=10 * mib, block_play_s=1.0)[0] == 1  # never below one
    assert derive_max_sessions(cost, free=None, block_play_s=0.25)[0] == 2  # unknown memory: the other limits
    assert free_memory("cpu") > 0  # Linux MemAvailable


def test_one_tiny_stream_is_measured_as_its_cache_decoder_and_context(random_world):
    torch.set_num_threads(1)  # as the server on 2 cores (conftest gives the test's own back)
    world = dataclasses.replace(random_world, generation="causal", chunk_frames=5)
    generator = PipelineGenerator(world)
    cost = measure_stream(generator)
    stream = generator.open_stream("p", Image.new("RGB", (64, 64)), 0, 1)
    try:
        stream.step(np.zeros((1, 2, 8)))
        decoder = sum(t.numel() * t.element_size() for t in stream.decoder.tiles[0].cache if t is not None)
        context = stream.context[:1].numel() * stream.context.element_size()  # one copy: guidance branches share it
        assert stream_state_bytes(stream) == stream.cache.nbytes + decoder + context
        assert cost.bytes == stream_state_bytes(stream) and cost.block_s > 0
        assert cost.source == "K/V cache + decoder state + prompt context"
    finally:
        stream.close()


# ---- issue 23: the memory arithmetic, CUDA's branches on a stand-in torch.cuda ------------------------------
def test_tensor_bytes_counts_each_storage_once_through_nested_containers():
    a = torch.zeros(10)  # 40 bytes
    b = torch.zeros(5, dtype=torch.float64)  # 40 bytes
    assert tensor_bytes([a, (a[2:], [b]), None, "text"]) == 80  # the view shares a's storage
    assert tensor_bytes() == 0


def test_the_reasons_for_max_sessions_read_right():
    mib = 2**20
    cost = StreamCost(bytes=100 * mib, source="test", block_s=0.1)
    assert derive_max_sessions(cost, free=3 * 2**30, block_play_s=0.35, cap=8) == (
        3, "3 (one stream 100.0 MiB, test; 3.0 GiB free: 15 fit in 50%; a block 100 ms for 350 ms of playback: "
           "3 in real time; cap 8)")
    assert derive_max_sessions(cost, free=None, block_play_s=0.35, cap=8)[1].startswith(
        "3 (one stream 100.0 MiB, test; unknown free memory: 8 fit in 50%;")
    rounded = derive_max_sessions(StreamCost(bytes=mib, source="t", block_s=0.9), None, block_play_s=2.7)[1]
    assert "a block 900 ms for 2700 ms of playback: 3 in real time" in rounded
    slow = StreamCost(bytes=100 * mib, source="test", block_s=1.0)
    assert derive_max_sessions(slow, free=None, block_play_s=0.5, cap=8)[0] == 1  # slower than real time: one
    tiny = StreamCost(bytes=1, source="test", block_s=0.001)
    assert derive_max_sessions(tiny, free=64, block_play_s=1.0, cap=100)[0] == 32  # half of 64 bytes, 1 each


def test_block_play_s_is_the_blocks_frames_over_fps():
    world = SimpleNamespace(causal_settings=SimpleNamespace(block_frames=2), fps=16)
    assert block_play_s(world) == 0.5  # 2 latent frames x 4 video frames / 16 fps


def test_free_memory_reads_linux_memavailable(monkeypatch):
    monkeypatch.setattr("server.generation.streams.open",
                        lambda path: io.StringIO("MemTotal: 9000 kB\nMemAvailable:    2048 kB\n"), raising=False)
    assert free_memory("cpu") == 2048 * 1024

    def missing(path):
        raise OSError("no /proc")
    monkeypatch.setattr("server.generation.streams.open", missing, raising=False)
    assert free_memory("cpu") is None


def test_free_memory_on_cuda_counts_cached_but_unused_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: calls.append(device) or (1000, 5000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: calls.append(device) or 300)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: calls.append(device) or 100)
    assert free_memory("cuda:1") == 1000 + 300 - 100
    assert calls == [torch.device("cuda:1"), "cuda:1", "cuda:1"]


class FakeStream:
    def __init__(self, log):
        self.log = log

    def step(self, actions):
        self.log.append(("step", actions.shape))

    def close(self):
        self.log.append("close")


def test_a_cuda_stream_is_measured_as_its_allocated_memory_delta(monkeypatch):
    allocated = iter([1_000, 1_000 + 7 * 2**20])  # before opening, after two blocks
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *device: next(allocated))
    log = []
    world = SimpleNamespace(device="cuda:0", causal_settings=SimpleNamespace(block_frames=2), prompt="p", width=64,
                            height=32, steps=3)
    generator = SimpleNamespace(world=world, open_stream=lambda prompt, image, seed, steps: log.append(
        (prompt, image.size, seed, steps)) or FakeStream(log))
    cost = measure_stream(generator)
    assert cost.bytes == 7 * 2**20 and cost.source == "CUDA allocated-memory delta of one open stream"
    assert 0 <= cost.block_s < 10
    assert log == [("p", (64, 32), 0, 3), ("step", (2, 2, 8)), ("step", (2, 2, 8)), "close"]
