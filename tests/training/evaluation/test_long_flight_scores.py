"""training.evaluation.long_flight_scores: windows, drift, and the sharpness and colour measures on known images."""
import numpy as np
import pytest

from training.evaluation import long_flight_scores as sc


def test_window_bounds_cover_every_generated_frame_once():
    assert sc.window_bounds(120, 12) == [(a, a + 12) for a in range(0, 120, 12)]
    assert sc.window_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]  # the last window is shorter
    frames = [f for a, b in sc.window_bounds(10, 4) for f in range(4 * a + 1, 4 * b + 1)]
    assert frames == list(range(1, 41))  # frame 0 (the start) belongs to no window


def test_drift_is_the_worst_windows_drop_relative_to_the_best():
    assert sc.drift([0.8, 0.6, 0.7]) == pytest.approx(0.25)
    assert sc.drift([None, 20.0, 20.0]) == 0.0 and sc.drift([None]) is None
    windows = [{"accuracy": 0.8, "psnr_db": 20.0, "sharpness_ratio": 1.0, "palette_distance": 0.2},
               {"accuracy": 0.7, "psnr_db": 15.0, "sharpness_ratio": 0.8, "palette_distance": 0.4},
               {"accuracy": None, "psnr_db": 16.0, "sharpness_ratio": 1.25, "palette_distance": 0.3}]
    assert sc.drifts(windows) == pytest.approx({"accuracy": 0.125, "psnr_db": 0.25,
                                                "sharpness": 0.2,  # 0.8 and 1.25 are equally far from truth
                                                "palette": 0.25})  # similarities 0.8 .. 0.6
    ceiling = [{f"vae_{k}": v for k, v in w.items() if k != "accuracy"} for w in windows]
    assert sc.drifts(ceiling, "vae_") == pytest.approx({"psnr_db": 0.25, "sharpness": 0.2, "palette": 0.25})


def test_sharpness_and_colour_measures_on_known_images():
    flat = np.full((16, 16, 3), 128, np.uint8)
    checker = ((np.indices((16, 16)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)  # (16, 16, 3)
    assert sc.sharpness(flat) == 0.0
    assert sc.sharpness(checker) == pytest.approx((4 * 255) ** 2)  # every Laplacian is +-4 x 255, mean 0
    half = (checker // 2 + 64).astype(np.uint8)  # 64 / 191: half the contrast, a quarter of the variance
    assert sc.sharpness(half) == pytest.approx((4 * 127) ** 2)
    blurred = ((checker.astype(int) + np.roll(checker, 1, 1)) // 2).astype(np.uint8)  # a box blur: flat grey
    assert sc.sharpness(blurred) < 0.01 * sc.sharpness(checker)
    same = sc.frame_measures(np.stack([checker, flat]), np.stack([checker, flat]))
    assert same["palette_distance"].tolist() == [0.0, 0.0] and (same["psnr_db"] > 100).all()
    assert same["sharp_generated"].tolist() == same["sharp_true"].tolist()
    other = sc.frame_measures(np.zeros((1, 8, 8, 3), np.uint8), np.full((1, 8, 8, 3), 255, np.uint8))
    assert other["palette_distance"][0] == 1.0 and other["psnr_db"][0] == pytest.approx(0.0)
