"""training.evaluation.sources: clips from files, from the synthetic dataset, and first frames."""
import numpy as np
import pytest
from PIL import Image

from training.data.synthetic import render_random_flight
from training.evaluation.sources import image_first_frames, load_csv, synthetic_flights


def test_evaluation_flight_i_is_dataset_clip_i_of_the_same_seed():
    clips = synthetic_flights(3, seed=4, frames=9, height=32, width=32)
    for index, clip in enumerate(clips):  # odd indices once drew the heading and scene in the other order
        video, _, flown, prompt = render_random_flight(4, index, 9, 32, 32)
        assert np.array_equal(clip["frames"], video) and np.array_equal(clip["actions"], flown)
        assert clip["prompt"] == prompt and clip["name"] == f"synthetic_4_{index:04d}"


def test_csv_is_read_by_the_dataset_reader(tmp_path):
    (tmp_path / "metadata.csv").write_text("prompt,action\nx,[]\n")
    with pytest.raises(ValueError, match=r"--csv .*metadata.csv: missing column\(s\) \['video'\]"):
        load_csv(tmp_path / "metadata.csv")
    (tmp_path / "metadata.csv").write_text("video,action\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_csv(tmp_path / "metadata.csv")


def test_image_first_frames_are_centre_crops_with_their_prompts(tmp_path):
    picture = np.zeros((20, 60, 3), np.uint8)
    picture[:, 20:40] = 255
    Image.fromarray(picture).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a white pillar\n")
    Image.fromarray(picture).save(tmp_path / "b.png")
    frames = image_first_frames(tmp_path, 16, 16, "fallback")
    assert [(name, prompt) for name, _, prompt in frames] == [("a", "a white pillar"), ("b", "fallback")]
    assert frames[0][1].shape == (16, 16, 3) and frames[0][1][:, 2:-2].min() > 200
    with pytest.raises(ValueError, match="--images .*: no .png"):
        image_first_frames(tmp_path / "none", 16, 16, None)
