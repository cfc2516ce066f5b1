"""training.evaluation.action_effect (and its command): the DiT's response to opposite actions, both attentions."""
import pytest
import torch

from models.loading import build_pipeline
from training.action_effect import main as action_effect_main
from training.evaluation.action_effect import action_effect


def _pipe(scale: float):
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": scale, "injection_type": "adaln_tmod"})
    torch.manual_seed(0)
    for name, p in pipe.action_controller.named_parameters():  # trained-looking: no zero-initialised output layers
        if name != "output_scale":  # the scale stays what the test asks for
            p.data.normal_(0, 0.02)
    return pipe


def test_no_controller_effect_reads_zero_and_a_live_one_reads_above_zero():
    silent = action_effect(_pipe(0.0), 32, 32, scenes=1, timesteps=(900.0,))
    live = action_effect(_pipe(1.0), 32, 32, scenes=1, timesteps=(900.0,))
    assert set(silent) == {"bidirectional", "causal"} and set(silent["causal"]) == {"yaw", "move"}
    assert all(v == 0.0 for pattern in silent.values() for v in pattern.values())
    assert all(v > 1e-4 for pattern in live.values() for v in pattern.values())
    again = action_effect(_pipe(1.0), 32, 32, scenes=1, timesteps=(900.0,))
    assert again == live  # seeded: a run can be compared with the next


def test_bad_inputs_are_refused_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match="scenes"):
        action_effect(_pipe(1.0), 32, 32, scenes=0)
    for argv, message in ((["--world", str(tmp_path / "nowhere")], "not a folder"),
                          (["--world", str(tmp_path), "--scenes", "0"], "--scenes must be >= 1"),
                          (["--world", str(tmp_path)], f"--world {tmp_path}")):
        with pytest.raises(SystemExit) as exit_:
            action_effect_main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
