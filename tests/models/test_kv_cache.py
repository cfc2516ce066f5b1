"""models.kv_cache: a fixed-size ring of past frames per layer; the oldest window frames leave in order."""
import torch

from models.kv_cache import KVCache

N, D = 3, 4  # tokens per frame, width


def frames(*values) -> torch.Tensor:
    """(1, len(values) * N, D): frame i filled with values[i]."""
    return torch.cat([torch.full((1, N, D), float(v)) for v in values], dim=1)


def commit(cache, *values):
    for layer in range(2):
        cache.write(layer, frames(*values) + 100 * layer, -frames(*values))
    cache.advance(len(values))


def cached_values(cache, layer=0) -> list:
    keys, values = cache.context(layer, lambda k, positions: k)
    return [] if keys is None else [int(v) for v in keys[0, ::N, 0]]


def test_the_sink_stays_and_the_window_rolls_in_order():
    cache = KVCache(window=3, sink=True, layers=2, batch=1, tokens_per_frame=N, dim=D, device="cpu",
                    dtype=torch.float32)
    storage = (cache.k.data_ptr(), cache.v.data_ptr(), tuple(cache.k.shape))
    assert cached_values(cache) == [] and cache.block_positions(2) == (0, 1)
    commit(cache, 0)  # the first image: the sink
    commit(cache, 1)
    commit(cache, 2, 3)
    assert cached_values(cache) == [0, 1, 2, 3] and cache.block_positions(1) == (4,)
    for value in range(4, 40):  # a long flight
        commit(cache, value)
    assert cached_values(cache) == [0, 37, 38, 39] and cached_values(cache, layer=1) == [100, 137, 138, 139]
    _, values = cache.context(0, lambda k, positions: k)
    assert [int(v) for v in values[0, ::N, 0]] == [0, -37, -38, -39]
    assert cache.positions() == (0, 1, 2, 3) and cache.block_positions(2) == (4, 5)  # positions never grow
    assert (cache.k.data_ptr(), cache.v.data_ptr(), tuple(cache.k.shape)) == storage  # no reallocation
    assert cache.nbytes == 2 * 2 * 1 * 4 * N * D * 4
    commit(cache, 50, 51, 52, 53, 54)  # a block longer than the window keeps its newest frames
    assert cached_values(cache) == [0, 52, 53, 54]


def test_without_a_sink_the_first_image_is_a_window_frame():
    cache = KVCache(window=2, sink=False, layers=2, batch=1, tokens_per_frame=N, dim=D, device="cpu",
                    dtype=torch.float32)
    commit(cache, 0)
    commit(cache, 1)
    commit(cache, 2)
    assert cached_values(cache) == [1, 2]


def test_rotated_keys_are_kept_until_the_cache_changes():
    cache = KVCache(window=2, sink=True, layers=2, batch=1, tokens_per_frame=N, dim=D, device="cpu",
                    dtype=torch.float32)
    commit(cache, 0)
    calls = []

    def rotate(keys, positions):
        calls.append(positions)
        return keys * 2
    first, _ = cache.context(0, rotate)
    again, _ = cache.context(0, rotate)
    assert first is again and calls == [(0,)]
    commit(cache, 1)
    cache.context(0, rotate)
    assert calls == [(0,), (0, 1)]
