"""models.media: mp4 writing and reading, probing, centre crop + resize (shared by the server and training)."""
import numpy as np
import pytest
from PIL import Image

from models.media import DEFAULT_CRF, LIVE_CRF, Mp4Writer, fit_image, probe_video, read_video, write_mp4


def moving_pattern(frames: int, height: int = 64, width: int = 96) -> np.ndarray:
    """Smooth stripes sliding right by 3 px a frame: (F, H, W, 3) uint8."""
    x = np.arange(width)[None, None, :] - 3 * np.arange(frames)[:, None, None]  # (F, 1, W)
    y = np.arange(height)[None, :, None]  # (1, H, 1)
    value = 127 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)  # (F, H, W)
    return np.stack([value, 255 - value, np.full_like(value, 90)], axis=-1).astype(np.uint8)


def test_mp4_round_trip_is_high_quality_and_probed(tmp_path):
    video = moving_pattern(9)
    assert write_mp4(tmp_path / "a.mp4", video, fps=24) == 9
    assert probe_video(tmp_path / "a.mp4") == {"fps": 24.0, "frames": 9, "width": 96, "height": 64}
    decoded = read_video(tmp_path / "a.mp4")
    assert decoded.shape == video.shape
    assert np.abs(decoded.astype(int) - video).mean() < 4.0
    assert np.array_equal(read_video(tmp_path / "a.mp4", stride=4), decoded[::4])  # frames 0, 4, 8


def test_live_settings_trade_size_for_speed(tmp_path):
    video = moving_pattern(9)
    write_mp4(tmp_path / "dataset.mp4", video, fps=24)
    write_mp4(tmp_path / "live.mp4", video, fps=24, crf=LIVE_CRF, preset="veryfast")
    assert LIVE_CRF > DEFAULT_CRF
    assert (tmp_path / "live.mp4").stat().st_size < (tmp_path / "dataset.mp4").stat().st_size


def test_writer_refuses_bad_frames_by_name(tmp_path):
    writer = Mp4Writer(tmp_path / "b.mp4", fps=8)
    with pytest.raises(ValueError, match="height and width must be even"):
        writer.write(np.zeros((33, 32, 3), np.uint8))
    writer.write(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"frame 1 has shape \(16, 32, 3\)"):
        writer.write(np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="expected uint8"):
        writer.write(np.zeros((32, 32, 3), np.float32))
    writer.close()
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "c.mp4", [], fps=8)


def test_fit_image_crops_the_centre_then_resizes_for_pil_and_arrays():
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = 200  # the centre third is bright, the sides dark
    fitted = fit_image(wide, 32, 32)  # a square from a 3:1 picture keeps only the centre
    assert isinstance(fitted, np.ndarray) and fitted.shape == (32, 32, 3)
    assert fitted[:, 2:-2].min() >= 190
    picture = fit_image(Image.fromarray(wide), 32, 32)
    assert isinstance(picture, Image.Image) and picture.size == (32, 32)
    assert np.array_equal(np.asarray(picture), fitted)  # one implementation for both
    same = fit_image(wide, 120, 40)
    assert np.array_equal(same, wide)  # already the target size: untouched
