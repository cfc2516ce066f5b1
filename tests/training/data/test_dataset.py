"""training.data.dataset: the CSV validated up front (bad rows named), and the resumable data order."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from models.media import write_mp4
from training.data.dataset import ActionVideoDataset, DataError, GlobalOrder, read_metadata, validate_rows
from training.data.synthetic import make_dataset
from training.train import main

GOOD = 2  # clips made by training.synthetic


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """Two good synthetic clips plus one row of each kind of damage."""
    out = tmp_path_factory.mktemp("bad_rows")
    rows = make_dataset(out, clips=GOOD, frames=9, height=32, width=32, seed=2)
    write_mp4(out / "videos" / "short.mp4", [np.zeros((32, 32, 3), np.uint8)] * 5, fps=24)
    (out / "videos" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    good_action = rows[0]["action"]
    nan_action = json.loads(good_action)
    nan_action[1][1][0] = math.nan
    half_flag = json.loads(good_action)
    half_flag[0][0][0] = 0.5
    rows += [
        {"video": "videos/missing.mp4", "prompt": "a drone", "action": good_action},  # row 3
        {"video": rows[0]["video"], "prompt": "a drone", "action": json.dumps([[[0] * 8, [0] * 8]])},  # 4: T=1
        {"video": rows[0]["video"], "prompt": "a drone", "action": json.dumps(nan_action)},  # 5: NaN
        {"video": "videos/short.mp4", "prompt": "a drone", "action": good_action},  # 6: 5 frames
        {"video": "videos/broken.mp4", "prompt": "a drone", "action": good_action},  # 7: not decodable
        {"video": rows[0]["video"], "prompt": "a drone", "action": json.dumps(half_flag)},  # 8: flag 0.5
        {"video": rows[0]["video"], "prompt": "", "action": good_action},  # 9: no prompt
        {"video": rows[0]["video"], "prompt": "a drone", "action": "[[1, 2"},  # 10: not JSON
    ]
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "prompt", "action"])
        writer.writeheader()
        writer.writerows(rows)
    return out


EXPECTED = {
    3: "videos/missing.mp4): video file not found",
    4: "action has 1 steps, --num_frames needs 2",
    5: "contains NaN",
    6: "video has 5 frames, --num_frames needs 9",
    7: "videos/broken.mp4): unreadable video",
    8: "must be 0 or 1",
    9: "empty prompt",
    10: "not valid JSON",
}


def test_bad_rows_are_reported_with_row_numbers(dataset_dir):
    rows = read_metadata(str(dataset_dir / "metadata.csv"))
    with pytest.raises(DataError) as error:
        validate_rows(rows, str(dataset_dir), num_frames=9, steps=2, on_bad_sample="error")
    message = str(error.value)
    assert f"{len(EXPECTED)} bad row(s) of {GOOD + len(EXPECTED)}" in message
    for row, text in EXPECTED.items():
        line = next(line for line in message.splitlines() if line.strip().startswith(f"row {row} (line {row + 1},"))
        assert text in line, (row, line)


def test_skip_keeps_the_good_rows(dataset_dir):
    rows = read_metadata(str(dataset_dir / "metadata.csv"))
    good, problems = validate_rows(rows, str(dataset_dir), num_frames=9, steps=2, on_bad_sample="skip")
    assert [row.row for row in good] == [1, 2] and len(problems) == len(EXPECTED)
    assert good[0].action.shape == (2, 2, 8) and good[0].action.dtype == torch.float32
    sample = ActionVideoDataset(good, str(dataset_dir), num_frames=9, height=32, width=32, repeat=2)[3]
    assert len(sample["video"]) == 9 and sample["video"][0].size == (32, 32)
    assert sample["row"] == 2 and torch.equal(sample["action"], good[1].action)


def test_training_stops_at_start_up_naming_the_rows(dataset_dir, tmp_path, capsys):
    args = ["--preset", "tiny", "--dataset_base_path", str(dataset_dir), "--num_frames", "9", "--height", "32",
            "--width", "32", "--max_steps", "1", "--output_path", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "row 3 (line 4, videos/missing.mp4)" in err and "--on_bad_sample skip" in err
    assert not (tmp_path / "out").exists()  # nothing written before the data is known good


def test_missing_columns(tmp_path):
    (tmp_path / "m.csv").write_text("video_name,prompt,action\nx.mp4,p,[]\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['video'\]"):
        read_metadata(str(tmp_path / "m.csv"))


def test_global_order_splits_epochs_between_ranks_and_resumes():
    n, world = 5, 2
    ranks = [GlobalOrder(n, seed=3, world_size=world, rank=r) for r in range(world)]
    streams = [[i for i, _ in zip(iter(order), range(10))] for order in ranks]  # 10 per rank = 4 epochs
    interleaved = [streams[p % world][p // world] for p in range(2 * world * 5)]
    for epoch in range(4):
        assert sorted(interleaved[epoch * n:(epoch + 1) * n]) == list(range(n))  # every epoch is a permutation
    assert interleaved[:n] != interleaved[n:2 * n]  # reshuffled per epoch
    resumed = GlobalOrder(n, seed=3, world_size=world, rank=1, start=6)  # 6 global samples consumed
    assert [i for i, _ in zip(iter(resumed), range(7))] == streams[1][3:10]
    assert GlobalOrder(n, seed=4).permutation(0).tolist() != GlobalOrder(n, seed=3).permutation(0).tolist()
