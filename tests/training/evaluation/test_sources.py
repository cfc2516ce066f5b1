"""training.evaluation.sources: clips from files, from the synthetic dataset, and first frames."""
import json

import numpy as np
import pytest
from PIL import Image

from models.media import LiveTsWriter
from training.data.synthetic import render_random_flight
from training.evaluation.sources import image_first_frames, load_csv, load_recordings, synthetic_flights


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


def test_a_recording_cut_off_by_a_kill_is_read_to_its_last_whole_step(tmp_path, capsys):
    """A server killed mid-flight leaves ``<id>.part.ts`` + ``<id>.part.jsonl``: frames and actions are cut to the
    whole steps both hold (here the video stops 2 frames into the third chunk, and the last line was cut)."""
    video, _, flown, _ = render_random_flight(3, 0, 17, 32, 32)  # 4 steps
    writer = LiveTsWriter(tmp_path / "flight-cut1.part.ts", 8)
    writer.write_frames(video[:15])  # chunk 0 (9 frames), chunk 1 (4), 2 frames of chunk 2
    writer.close()
    lines = [{"fps": 8, "prompt": "hills"}, {"index": 0, "frames": 9, "actions": flown[:2].tolist()},
             {"index": 1, "frames": 4, "actions": flown[2:3].tolist()},
             {"index": 2, "frames": 4, "actions": flown[3:4].tolist()}]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"index": 3, "fra'
    (tmp_path / "flight-cut1.part.jsonl").write_text(text)
    (tmp_path / "flight-none.part.jsonl").write_text(json.dumps({"fps": 8}) + "\n")  # killed before its first chunk
    [clip] = load_recordings(tmp_path)
    assert clip["name"] == "flight-cut1" and clip["prompt"] == "hills"
    assert clip["frames"].shape == (13, 32, 32, 3) and clip["actions"].shape == (3, 2, 8)
    assert np.allclose(clip["actions"], flown[:3], atol=1e-6)
    assert np.abs(clip["frames"].astype(int) - video[:13]).mean() < 8  # the same frames (H.264 at CRF 23)
    assert "flight-none.part.jsonl skipped" in capsys.readouterr().err
