"""python -m training.rollout: the drift of the committed toy world, and user errors."""
import json
import os

import pytest

from training.evaluation.rollout import FLIGHTS
from training.rollout import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_folder_without_serve_json_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--world", str(tmp_path)])
    assert "serve.json" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--chunks", "--scenes"])
def test_zero_chunks_or_scenes_are_refused_by_name(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--world", os.path.join(REPO, "worlds", "toy"), flag, "0"])
    assert exit_.value.code == 2 and "--chunks and --scenes must be at least 1" in capsys.readouterr().err


def test_measure_on_the_committed_toy_world(tmp_path):
    out = tmp_path / "rollout.json"
    assert main(["--world", os.path.join(REPO, "worlds", "toy"), "--chunks", "2", "--scenes", "1",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["flights"]) == set(FLIGHTS) and result["seconds"] == 1.0  # 2 chunks x 4 frames, 8 fps
    for entry in result["flights"].values():
        assert len(entry["palette_distance"]) == 2 and all(0 <= d <= 1 for d in entry["palette_distance"])
    assert all(10 < db < 60 for db in result["flights"]["hover"]["psnr_db"])
