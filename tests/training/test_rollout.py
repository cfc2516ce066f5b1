"""training.rollout: the drift measures and the chunk-after-chunk flight (CPU)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from training import rollout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_palette_distance_is_zero_for_the_same_colours_and_one_for_disjoint_ones():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert rollout.palette_distance(frame, frame[::-1, ::-1]) == 0.0  # same colours, other places
    assert rollout.palette_distance(np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)) == 1.0
    half = np.zeros((4, 4, 3), np.uint8)
    half[:2] = 255
    assert rollout.palette_distance(half, np.zeros((4, 4, 3), np.uint8)) == pytest.approx(0.5)
    assert rollout.psnr(frame, frame) > 90


class BrighterEachChunk:
    """A stand-in pipeline: every frame of a chunk is its first image + 10, and it records each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, input_image, num_frames, actions, seed, **kwargs):
        self.calls.append({"seed": seed, "steps": len(actions), "first": np.asarray(input_image)})
        brighter = Image.fromarray(np.clip(np.asarray(input_image).astype(np.int64) + 10, 0, 255).astype(np.uint8))
        return [brighter] * num_frames


def test_each_chunk_starts_from_the_previous_chunks_last_frame():
    pipe, first = BrighterEachChunk(), np.full((8, 8, 3), 100, np.uint8)
    actions = np.zeros((3, 2, 8), np.float32)
    lasts = rollout.rollout(pipe, first, "a field", actions, chunk_frames=5, steps=2, seed=7)
    assert [int(frame[0, 0, 0]) for frame in lasts] == [110, 120, 130]
    assert [int(call["first"][0, 0, 0]) for call in pipe.calls] == [100, 110, 120]
    assert [call["seed"] for call in pipe.calls] == [7, 8, 9] and all(c["steps"] == 1 for c in pipe.calls)


def test_measure_on_the_committed_toy_world(tmp_path):
    out = tmp_path / "rollout.json"
    assert rollout.main(["--world", os.path.join(REPO, "worlds", "toy"), "--chunks", "2", "--scenes", "1",
                         "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["flights"]) == set(rollout.FLIGHTS) and result["seconds"] == 1.0  # 2 chunks x 4 frames, 8 fps
    for entry in result["flights"].values():
        assert len(entry["palette_distance"]) == 2 and all(0 <= d <= 1 for d in entry["palette_distance"])
    assert all(10 < db < 60 for db in result["flights"]["hover"]["psnr_db"])


def test_a_folder_without_serve_json_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rollout.main(["--world", str(tmp_path)])
    assert "serve.json" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--chunks", "--scenes"])
def test_zero_chunks_or_scenes_are_refused_by_name(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        rollout.main(["--world", os.path.join(REPO, "worlds", "toy"), flag, "0"])
    assert exit_.value.code == 2 and "--chunks and --scenes must be at least 1" in capsys.readouterr().err
