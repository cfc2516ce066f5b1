"""server.media.images: JPEG encoding of a frame group on the CPU (simplejpeg) and on a GPU (torchvision), and
where "auto" encodes."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from server.media.images import check_jpeg_device, encode_jpeg, encode_jpegs, resolve_jpeg_device


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (3, 4, 6, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((96, 64), Image.BILINEAR)) for c in coarse])  # (3, 64, 96, 3)


def decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)


def test_a_group_on_the_cpu_is_simplejpeg_frame_by_frame(frames):
    jpegs = encode_jpegs(frames, 85, "cpu")
    assert jpegs == [encode_jpeg(frame, 85) for frame in frames]
    assert encode_jpegs(torch.from_numpy(frames), 85, "cpu") == jpegs  # a tensor group too
    for jpeg, frame in zip(jpegs, frames):
        assert jpeg[:2] == b"\xff\xd8" and np.abs(decoded(jpeg) - frame).mean() < 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torchvision's GPU JPEG encoder)")
def test_a_group_on_the_gpu_is_one_torchvision_call(frames):
    jpegs = encode_jpegs(frames, 85, "cuda")
    assert len(jpegs) == 3
    for jpeg, frame in zip(jpegs, frames):
        assert jpeg[:2] == b"\xff\xd8" and np.abs(decoded(jpeg) - frame).mean() < 4


def test_auto_follows_the_worlds_device_and_bad_names_are_refused():
    assert resolve_jpeg_device("auto", "cuda") == "cuda" and resolve_jpeg_device("auto", "cpu") == "cpu"
    assert resolve_jpeg_device("cpu", "cuda:0") == "cpu" and resolve_jpeg_device("cuda:1", "cpu") == "cuda:1"
    with pytest.raises(ValueError, match="jpeg_device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        check_jpeg_device("gpu")
