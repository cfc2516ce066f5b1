"""server.generation.streams: the just-in-time pacing lead, one stream's measured memory (tiny preset, real stream)
and the max_sessions it gives."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from server.generation.generators import PipelineGenerator
from server.generation.streams import (
    MEMORY_SHARE,
    Pacer,
    StreamCost,
    derive_max_sessions,
    free_memory,
    measure_stream,
    stream_state_bytes,
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
