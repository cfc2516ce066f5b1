"""server.generate: one offline clip from the command line; actions from a JSON file or a text timeline."""
import re

import imageio_ffmpeg
import numpy as np
import pytest

from models.action_format import DEFAULT_FULL_SCALE
from server import generate as generate_cli


def test_cli_generate(tmp_path, capsys, random_world):
    out = tmp_path / "cli.mp4"
    assert generate_cli.main(["--prompt", "a drone", "--actions", "forward:2,yaw_left:1", "--out", str(out),
                              "--steps", "1"]) == 0
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 13  # 4 * 3 steps + 1
    printed = capsys.readouterr()
    assert "step 1/1" not in printed.err and "denoising: 100%" in printed.err  # one progress bar, not a line a step
    last = printed.out.strip().splitlines()[-1]  # which figure is the video's length and which the generation's
    assert re.match(r"wrote .*cli\.mp4: 13 frames, 128x128 at 8 fps = 1\.6 s of video; generating took \d+\.\d s "
                    r"\(1 steps, cpu; weights: toy world", last), last  # the default world
    actions_file = tmp_path / "actions.json"
    actions_file.write_text("[[[1,0,0,0,0,0,0,0],[0.01,0,0,0,0,0,0,0]]]")
    np.testing.assert_allclose(generate_cli.load_actions(str(actions_file), DEFAULT_FULL_SCALE)[0, :, 0], [1, 0.01])
    actions_file.write_text("[[[2,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0]]]")
    with pytest.raises(ValueError, match="binary flags"):
        generate_cli.load_actions(str(actions_file), DEFAULT_FULL_SCALE)
    assert generate_cli.main(["--prompt", "x", "--actions", "fly:3", "--out", str(out)]) == 2
    assert "unknown action 'fly'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        generate_cli.main(["--prompt", "x", "--actions", "forward:1", "--out", str(out), "--action_guidance", "0"])
    assert exit_.value.code == 2
    assert "python -m server.generate: error: action_guidance must be" in capsys.readouterr().err  # named by this CLI
    assert generate_cli.main(["--prompt", "x", "--actions", "forward:1", "--out", str(out), "--world", "random",
                              "--decoder", "small"]) == 2
    assert "decoder: 'small' needs a small decoder" in capsys.readouterr().err  # the random world has none
    with pytest.raises(SystemExit):
        generate_cli.main(["--prompt", "x", "--actions", "forward:1", "--out", str(out), "--decoder", "tiny"])
    assert "decoder must be one of ['wan', 'small']" in capsys.readouterr().err


def test_cli_generates_any_length_through_a_stream_in_a_causal_world(tmp_path, capsys, random_world):
    out = tmp_path / "long.mp4"
    assert generate_cli.main(["--prompt", "a drone", "--actions", "forward:22", "--out", str(out),
                              "--generation", "chunked"]) == 2
    assert "more than 81" in capsys.readouterr().err  # one chunked generation has a limit...
    assert generate_cli.main(["--prompt", "a drone", "--actions", "forward:22", "--out", str(out), "--steps", "1",
                              "--generation", "causal"]) == 0  # ...a stream has none
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 89  # 1 + 4 x 22 blocks
    assert generate_cli.main(["--prompt", "a drone", "--actions", "forward:3", "--out", str(out),
                              "--generation", "causal", "--block_frames", "2"]) == 2
    assert "actions: this causal world makes blocks of 2 action steps" in capsys.readouterr().err


def test_help_explains_the_options_and_the_action_grammar():
    text = generate_cli.build_parser().format_help()
    assert text.startswith("usage: python -m server.generate --prompt TEXT --actions SPEC|FILE --out VIDEO.mp4")
    assert "``" not in text
    for words in ("joined with + (held together)", "=F ", "hover (no action)", "forward+yaw_left:10,hover:5",
                  "forward=0.5:8", "--steps INT           denoising steps per chunk or block",
                  "--world TEXT          \"auto\" (toy if shipped"):
        assert words in text, words
