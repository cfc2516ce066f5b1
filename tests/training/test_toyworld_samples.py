"""python -m training.toyworld_samples writes the committed first frames."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from training.toyworld_samples import main as samples_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TOY = os.path.join(REPO, "worlds", "toy")


def test_samples_are_the_committed_first_frames(tmp_path, capsys):
    assert samples_main(["--world", TOY, "--out", str(tmp_path)]) == 0
    for index in (1, 2, 3):  # the committed web/samples are exactly what the command writes
        written = np.asarray(Image.open(tmp_path / f"synthetic-{index}.png"))
        assert np.array_equal(written, np.asarray(Image.open(os.path.join(REPO, "web", "samples",
                                                                           f"synthetic-{index}.png"))))
    hints = json.load(open(os.path.join(TOY, "serve.json")))
    assert f"{hints['sample']}.png: {hints['prompt']}" in capsys.readouterr().out  # serve.json's prompt is its own
    with pytest.raises(SystemExit) as exit_:
        samples_main(["--world", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--world:" in error and "serve.json not found" in error
