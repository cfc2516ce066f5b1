"""Streaming VAE decode (models/streaming.py): group-by-group decoding is bit-identical however the latents are
grouped and equals the stock decode, and "denoise to latents" + "stream decode" equals a normal pipeline call.
Tiny preset on CPU.

Against the stock decode the float frames may differ by a few 1e-6 on CPUs whose 1x1x1 conv kernel sums the
channels in another order for another frame count (the stream runs that conv frame by frame), so a few uint8
values in 1e5 may be one grey level off; bit-identity however grouped holds on every host."""
import numpy as np
import pytest
import torch

from models.media import video_to_frames
from models.streaming import _group_sizes, _tile_tasks, stream_decode


@pytest.fixture(scope="module")
def latents():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(1, 48, 4, 4, 4, generator=generator)  # (1, C, F=4, h, w): 13 frames of 64x64


def test_tile_tasks_cover_the_grid_without_a_redundant_last_tile():
    """As ``WanVideoVAE.tiled_decode``: a tile starts every stride, except one whose predecessor already reaches the
    edge (a grid no larger than one tile is one tile)."""
    assert _tile_tasks(1, 1, (3, 3), (2, 2)) == [(0, 3, 0, 3)]
    assert _tile_tasks(3, 5, (3, 3), (2, 2)) == [(0, 3, 0, 3), (0, 3, 2, 5)]
    assert _tile_tasks(5, 3, (3, 3), (2, 2)) == [(0, 3, 0, 3), (2, 5, 0, 3)]


def test_group_sizes_put_the_first_image_alone():
    assert _group_sizes(5, 1) == [1, 1, 1, 1, 1]
    assert _group_sizes(5, 3) == [1, 3, 1]
    assert _group_sizes(21, 8) == [1, 8, 8, 4]
    assert _group_sizes(1, 2) == [1]


def assert_same_as_stock(streamed: torch.Tensor, stock: torch.Tensor):
    """The stock decode's frames within the one conv's rounding (module docstring): floats within 1e-5, so uint8
    frames off by one grey level at most, where a value sat on a rounding edge (a handful in 1e5)."""
    assert streamed.shape == stock.shape
    assert (streamed - stock).abs().max().item() <= 1e-5
    off = np.abs(video_to_frames(streamed).astype(int) - video_to_frames(stock).astype(int))  # (F, H, W, 3)
    assert off.max() <= 1 and off.mean() <= 1e-4


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("group", [1, 2])
def test_streamed_groups_equal_full_decode(tiny_pipe, latents, group, tiled):
    vae, tiles = tiny_pipe.vae, dict(tile_size=(3, 3), tile_stride=(2, 2))
    full = vae.decode(latents, device="cpu", tiled=tiled, **tiles)  # (1, 3, 13, 64, 64)
    parts = list(stream_decode(vae, latents, "cpu", tiled=tiled, group=group, **tiles))
    assert [p.shape[2] for p in parts] == [1] + [4 * n for n in _group_sizes(4, group)[1:]]
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == (1, 3, 13, 64, 64)
    at_once = torch.cat(list(stream_decode(vae, latents, "cpu", tiled=tiled, group=4, **tiles)), dim=2)
    assert torch.equal(streamed, at_once)  # however grouped, bit for bit
    assert_same_as_stock(streamed, full)


def test_stream_decode_leaves_grad_mode_and_model_cache_alone(tiny_pipe, latents):
    model = tiny_pipe.vae.model
    model.clear_cache()
    before = list(model._feat_map)
    stream = stream_decode(tiny_pipe.vae, latents, "cpu", tiled=False)
    next(stream)
    assert torch.is_grad_enabled()  # the caller between groups keeps its grad mode
    assert model._feat_map == before


def test_bad_arguments_name_the_field(tiny_pipe, latents):
    with pytest.raises(ValueError, match="group"):
        next(stream_decode(tiny_pipe.vae, latents, "cpu", group=0))
    with pytest.raises(ValueError, match="latents"):
        next(stream_decode(tiny_pipe.vae, latents[0], "cpu"))


@pytest.mark.parametrize("tiled", [False, True])
def test_latents_then_stream_equals_pipeline_call(tiny_pipe, gen_kwargs, tiled):
    # a 4x4 latent grid in 4 overlapping tiles, so the tiled case checks the blending too
    assert _tile_tasks(4, 4, (3, 3), (2, 2)) == [(0, 3, 0, 3), (0, 3, 2, 5), (2, 5, 0, 3), (2, 5, 2, 5)]
    kwargs = dict(gen_kwargs, tiled=tiled, tile_size=(3, 3), tile_stride=(2, 2))
    video = tiny_pipe(**kwargs)  # (1, 3, 9, 64, 64)
    latents = tiny_pipe.generate_latents(**kwargs)  # (1, 48, 3, 4, 4)
    assert latents.shape == (1, 48, 3, 4, 4)
    assert "decode" not in vars(tiny_pipe.vae)  # the capture is undone
    parts = list(tiny_pipe.stream_decode(latents, tiled=tiled, tile_size=(3, 3), tile_stride=(2, 2), group=1))
    assert [p.shape[2] for p in parts] == [1, 4, 4]
    assert_same_as_stock(torch.cat(parts, dim=2), video)
