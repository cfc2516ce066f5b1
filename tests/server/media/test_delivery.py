"""server.media.delivery: what a flight receives from the delivery thread. Frame groups of a streaming flight go out as
the VAE decodes them (ChunkFrames, then MoreFrames), a non-streaming flight gets each chunk whole, binary frames carry
chunk and global frame indices, and a stop in the middle of a streamed chunk (or a causal block) records exactly what
was sent, with the action steps those frames show."""
import dataclasses
import json
import struct
import threading
import time

import numpy as np
import simplejpeg
from PIL import Image

from models.options import CausalSettings
from server.generation.engine import Engine
from server.generation.flight import ChunkFrames, Flight, MoreFrames
from server.generation.generators import Generator
from server.inputs import InputTimeline
from server.protocol import FRAME_HEADER, Recording
from server.settings import Settings


class GroupGenerator(Generator):
    """Yields a 9-frame chunk as groups of 1, 4, 4 frames (like the streaming VAE decode); frame i of a chunk is
    filled with i. Waits on ``release`` before the last group, so a test can see what went out before it."""

    def __init__(self, world):
        self.world, self.release, self.calls = world, threading.Event(), 0

    def generate(self, request, progress=None):
        raise AssertionError("flights use generate_stream")

    def generate_stream(self, request, timings=None):
        self.calls += 1
        frames = np.zeros((request.num_frames, self.world.height, self.world.width, 3), np.uint8)
        frames[:] = np.arange(request.num_frames, dtype=np.uint8)[:, None, None, None]  # (F, H, W, 3)
        if timings is not None:
            timings["denoised"] = time.perf_counter()
        yield frames[:1]
        yield frames[1:5]
        assert self.release.wait(10)
        yield frames[5:]


def frame_indices(messages):
    return [FRAME_HEADER.unpack(m[:FRAME_HEADER.size])[1] for m in messages]


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def started_streaming_flight(random_world, tmp_path):
    """(generator, started engine, its one streaming flight, the flight's events) on a GroupGenerator."""
    generator = GroupGenerator(dataclasses.replace(random_world, fps=1000))
    return (generator, *start_solo_flight(generator, tmp_path))


def start_solo_flight(generator, tmp_path):
    """(started engine, its one streaming flight, the flight's events) on ``generator``."""
    world = generator.world
    engine = Engine(generator, Settings(recordings_dir=str(tmp_path), gradio=False))
    events = []
    solo = Flight(prompt="s", image=Image.new("RGB", (world.width, world.height)), seed=0, steps=1,
                  timeline=InputTimeline(world.full_scale, world.fps), notify=events.append, stream=True)
    engine.add_flight(solo)
    engine.start()
    return engine, solo, events


def test_streaming_flight_gets_frame_groups_before_the_chunk_is_decoded(random_world, tmp_path):
    generator, engine, solo, events = started_streaming_flight(random_world, tmp_path)
    try:
        assert wait_for(lambda: len(events) >= 2)
        assert not generator.release.is_set()  # the last group is not decoded yet...
        first = events[0]  # ...but the chunk's first frames are out
        assert isinstance(first, ChunkFrames)
        assert (first.chunk.index, first.chunk.frames, first.chunk.first_frame) == (0, 9, 0)
        assert frame_indices(first.frames) == [0]
        assert events[1].index == 0 and frame_indices(events[1].frames) == [1, 2, 3, 4]
        generator.release.set()
        assert wait_for(lambda: sum(isinstance(e, ChunkFrames) for e in events) >= 2)
    finally:
        generator.release.set()
        engine.close()
    chunk0 = [i for e in events if isinstance(e, MoreFrames) and e.index == 0
              or isinstance(e, ChunkFrames) and e.chunk.index == 0 for i in frame_indices(e.frames)]
    assert chunk0 == list(range(9))
    second = next(e for e in events if isinstance(e, ChunkFrames) and e.chunk.index == 1)
    assert second.chunk.frames == 8 and second.chunk.first_frame == 9  # the repeated first frame is not sent
    assert frame_indices(second.frames) == [9, 10, 11, 12]  # its first group lost the repeated frame (1 of 1+4)
    assert engine.metrics.value("wanfly_chunks_delivered_total") >= 2
    assert engine.metrics.value("wanfly_first_frame_seconds_total") > 0


def test_stop_in_the_middle_of_a_streamed_chunk_records_what_was_sent(random_world, tmp_path):
    """The browser shows a streamed chunk's first frames before the chunk is decoded; a stop then must still give a
    recording of exactly those frames (not an empty one)."""
    generator, engine, solo, events = started_streaming_flight(random_world, tmp_path)
    try:
        assert wait_for(lambda: len(events) >= 2)  # frames 0..4 sent, the last group still decoding
        engine.finish_flight(solo)
        generator.release.set()
        assert wait_for(lambda: any(isinstance(e, Recording) for e in events))
    finally:
        generator.release.set()
        engine.close()
    recording = next(e for e in events if isinstance(e, Recording))
    assert recording.id is not None and recording.frames == 5 and recording.chunks == 1
    assert recording.video == f"/recordings/{recording.id}.mp4"
    assert not any(isinstance(e, MoreFrames) and frame_indices(e.frames)[0] >= 5 for e in events)  # none after stop


def test_non_streaming_flight_gets_each_chunk_whole(random_world, tmp_path):
    world = dataclasses.replace(random_world, fps=1000)
    generator = GroupGenerator(world)
    generator.release.set()
    engine = Engine(generator, Settings(recordings_dir=str(tmp_path), gradio=False))
    events = []
    engine.add_flight(Flight(prompt="whole", image=Image.new("RGB", (world.width, world.height)), seed=0, steps=1,
                             timeline=InputTimeline(world.full_scale, world.fps), notify=events.append))
    engine.start()
    try:
        assert wait_for(lambda: sum(isinstance(e, ChunkFrames) for e in events) >= 2)
    finally:
        engine.close()
    chunks = [e for e in events if isinstance(e, ChunkFrames)]
    assert not any(isinstance(e, MoreFrames) for e in events)
    assert frame_indices(chunks[0].frames) == list(range(9))
    assert frame_indices(chunks[1].frames) == list(range(9, 17))
    assert chunks[1].chunk.frames == 8 and chunks[1].chunk.gen_ms > 0
    header = struct.unpack(">II", chunks[1].frames[0][:8])  # the documented header: uint32 BE chunk, frame
    assert header == (1, 9) and simplejpeg.decode_jpeg(chunks[1].frames[0][8:]).shape == (64, 64, 3)


class HeldStream:
    """A causal stream stand-in: each block yields its latent frames' groups (frame 0 alone first, then 4 frames
    per latent frame), frame i filled with i; waits on ``release`` before a block's last group."""

    def __init__(self, block_frames, size, release):
        self.block_frames, self.size, self.release, self.frame, self.closed = block_frames, size, release, 0, False

    def _group(self, n):
        frames = np.zeros((n, *self.size, 3), np.uint8) + np.arange(self.frame, self.frame + n, dtype=np.uint8)[
            :, None, None, None]  # (n, H, W, 3)
        self.frame += n
        return frames

    def step_iter(self, actions):
        if self.frame == 0:
            yield self._group(1)
        for i in range(self.block_frames):
            if i == self.block_frames - 1:
                assert self.release.wait(10)
            yield self._group(4)

    def close(self):
        self.closed = True


class HeldStreamGenerator(Generator):
    def __init__(self, world):
        self.world, self.release, self.streams = world, threading.Event(), []

    def generate(self, request, progress=None):
        raise AssertionError("flights use streams")

    def open_stream(self, prompt, image, seed, steps):
        self.streams.append(HeldStream(self.world.causal_settings.block_frames, (self.world.height,
                                                                                  self.world.width), self.release))
        return self.streams[-1]


def test_stop_in_the_middle_of_a_block_records_its_frames_and_steps_alike(causal_world, tmp_path):
    """Blocks of 2 latent frames: the first block's frame 0 and first 4 frames went out, its last 4 frames were
    still decoding when the flight stopped; the recording has those 5 frames and 1 action step, not 2."""
    world = dataclasses.replace(causal_world, fps=1000, chunk_frames=9,
                                causal_settings=CausalSettings(block_frames=2))
    generator = HeldStreamGenerator(world)
    engine, solo, events = start_solo_flight(generator, tmp_path)
    try:
        assert wait_for(lambda: len(events) >= 2)  # frames 0..4 sent, the block's last group still decoding
        engine.finish_flight(solo)
        generator.release.set()
        assert wait_for(lambda: any(isinstance(e, Recording) for e in events))
    finally:
        generator.release.set()
        engine.close()
    first = events[0]
    assert (first.chunk.frames, np.array(first.chunk.actions).shape) == (9, (2, 2, 8))
    recording = next(e for e in events if isinstance(e, Recording))
    assert (recording.frames, recording.chunks) == (5, 1)
    record = json.loads((engine.recordings.folder / f"{recording.id}.json").read_text())
    assert record["chunks"][0]["frames"] == 5 and len(record["chunks"][0]["actions"]) == 1
    assert len(record["actions"]) == 1 and generator.streams[0].closed
