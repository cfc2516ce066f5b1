"""Images in and out: safe decoding of uploaded data URLs, bundled samples, frame conversion and JPEG encoding.
(The binary frame message around a JPEG is ``server.protocol.frame_message``.)"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}
DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,", re.IGNORECASE)
SAMPLES_FOLDER = "samples"


def decode_data_url(url: str, max_bytes: int, max_pixels: int, field: str = "image") -> Image.Image:
    """A ``data:image/...;base64,`` URL -> RGB PIL image. Raises ValueError naming ``field`` for anything else:
    another scheme, bad base64, too many bytes or pixels, an undecodable or unsupported image."""
    match = DATA_URL.match(url or "")
    if not match:
        raise ValueError(f"{field}: expected a data URL of a PNG, JPEG or WebP image (data:image/png;base64,...)")
    payload = url[match.end():]
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise ValueError(f"{field}: larger than the upload limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field}: invalid base64 data") from None
    return decode_image_bytes(data, max_bytes, max_pixels, field)


def decode_image_bytes(data: bytes, max_bytes: int, max_pixels: int, field: str = "image") -> Image.Image:
    if len(data) > max_bytes:
        raise ValueError(f"{field}: {len(data)} bytes, larger than the upload limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            if image.format not in ALLOWED_FORMATS:
                raise ValueError(f"{field}: format {image.format} is not accepted (PNG, JPEG or WebP)")
            width, height = image.size
            if width * height > max_pixels or width < 1 or height < 1:
                raise ValueError(f"{field}: {width}x{height} pixels exceed the limit of {max_pixels}")
            return image.convert("RGB")
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, SyntaxError) as error:
        raise ValueError(f"{field}: not a readable image ({type(error).__name__})") from None


def list_samples(web_dir) -> list[str]:
    folder = Path(web_dir) / SAMPLES_FOLDER
    return sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []


def load_sample(web_dir, name: str | None) -> Image.Image:
    """A bundled first frame by name (None = the first sample). ValueError naming ``sample`` if unknown."""
    names = list_samples(web_dir)
    if not names:
        raise ValueError(f"sample: no bundled samples in {Path(web_dir) / SAMPLES_FOLDER}; upload an image")
    name = names[0] if name is None else name
    if name not in names:
        raise ValueError(f"sample: unknown sample {name!r}; available: {names}")
    with Image.open(Path(web_dir) / SAMPLES_FOLDER / f"{name}.png") as image:
        return image.convert("RGB")


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    import simplejpeg
    return simplejpeg.encode_jpeg(frame, quality=quality, colorspace="RGB", fastdct=True)


def check_jpeg_device(value: str) -> str:
    """``jpeg_device``: "auto", "cpu", "cuda" or "cuda:N"; ValueError naming it otherwise."""
    if not isinstance(value, str) or not (value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value)):
        raise ValueError(f"jpeg_device must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def resolve_jpeg_device(setting: str, world_device: str) -> str:
    """"auto" -> the world's GPU when it runs on one (nvJPEG through torchvision), else "cpu" (simplejpeg)."""
    check_jpeg_device(setting)
    if setting != "auto":
        return setting
    return str(world_device) if str(world_device).startswith("cuda") else "cpu"


def encode_jpegs(frames, quality: int, device: str = "cpu") -> list[bytes]:
    """Frames (n, H, W, 3) uint8 (a numpy array or a tensor) -> n JPEG files. On "cpu" simplejpeg encodes them one by
    one; on a CUDA device torchvision's GPU encoder takes the whole group in one call (host frames are uploaded
    first)."""
    if not str(device).startswith("cuda"):
        frames = frames.cpu().numpy() if hasattr(frames, "cpu") else frames
        return [encode_jpeg(np.ascontiguousarray(frame), quality) for frame in frames]
    import torch
    from torchvision.io import encode_jpeg as gpu_encode
    batch = torch.as_tensor(frames).to(device, non_blocking=True).permute(0, 3, 1, 2)  # (n, 3, H, W) uint8
    encoded = gpu_encode(list(batch.contiguous()), quality=quality)  # n 1-D uint8 tensors on the device
    return [bytes(data.cpu().numpy()) for data in encoded]
