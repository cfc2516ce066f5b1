"""models.frames.lane + WorldStream(overlap=True): decodes on the lane give the same frames as inline decodes, in
order, while the caller makes the next block. Tiny preset on CPU (the thread overlaps; CUDA streams on a GPU)."""
import threading

import numpy as np
import pytest
import torch

from models.action_format import constant_actions
from models.frames.lane import DecodeLane

PROMPT = "a drone flies over a green field"


def actions(i):
    return constant_actions(1, {["Forward", "Yaw Left", "Pitch Up"][i % 3]: 1.0 if i % 2 else 0.01})


def test_the_lane_runs_in_order_on_its_own_thread():
    lane = DecodeLane("cpu")
    seen, main = [], threading.get_ident()
    futures = [lane.submit(lambda t, i=i: seen.append((i, threading.get_ident(), float(t.sum()))), torch.ones(2))
               for i in range(5)]
    for future in futures:
        future.result()
    lane.close()
    assert [s[0] for s in seen] == list(range(5))
    assert all(s[1] != main for s in seen) and all(s[2] == 2.0 for s in seen)


def test_an_overlapped_stream_makes_the_same_frames(pipe, first):
    inline = pipe.open_stream(first, PROMPT, seed=2, steps=2, window=2)
    expected = [inline.step(actions(i)) for i in range(4)]
    inline.close()
    stream = pipe.open_stream(first, PROMPT, seed=2, steps=2, window=2, overlap=True)
    pending = [stream.step_async(actions(0)), stream.step_async(actions(1))]  # two blocks in flight
    pending += [stream.step_async(actions(i)) for i in (2, 3)]
    got = [np.concatenate(p.result()) for p in pending]
    assert [len(g) for g in got] == [5, 4, 4, 4]
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)
    assert len(list(stream.step_iter(actions(4)))) == 1  # step_iter still works: one group per latent frame
    stream.close()
    assert stream.lane is None


def test_step_async_needs_overlap(pipe, first):
    stream = pipe.open_stream(first, PROMPT, seed=2, steps=1)
    with pytest.raises(ValueError, match="step_async: the stream was opened without overlap=True"):
        stream.step_async(actions(0))
    stream.close()
