"""python -m training.toyworld: the defaults are the committed recipe; bad options are refused by name."""
import json
import os

import pytest

from models.small_world import load_small_world
from training.smallworld import recipe as toyworld
from training.toyworld import build_parser as toyworld_parser
from training.toyworld import fill_generation_defaults
from training.toyworld import main as toyworld_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TOY = os.path.join(REPO, "worlds", "toy")


def _tiny_recipe(out, *extra):
    return ["--out", out, "--height", "32", "--width", "32", "--frames", "5", "--clips", "3", "--holdout", "2",
            "--vae_dim", "8", "--dim", "48", "--heads", "1", "--layers", "1", "--vae_steps", "2", "--dit_steps", "3",
            "--vae_batch", "1", "--batch", "2", "--save_steps", "1", "--speed", "4", "--decoder_steps", "2",
            "--injection_type", "adaln_tmod", "--no_progress", *extra]


# The committed causal world's command (docs/toyworld.md, "The causal world"): the chunked world's DiT and
# controller (worlds/toy before it, --init_dit) trained as a stream with the frame before each block joined to it.
CAUSAL_COMMAND = ["--out", "somewhere", "--generation", "causal", "--seed", "0", "--frames", "33", "--speed", "5",
                  "--clips", "1024", "--holdout", "32", "--vae_frames", "5", "--joint_previous", "--teacher_forcing",
                  "1.0", "--first_window", "0.75", "--dit_lr", "2e-4", "--serve_guidance", "3",
                  "--serve_guidance_rescale", "0.7", "--injection_type", "adaln_tmod", "--init_dit", "worlds/toy"]


def test_the_committed_world_was_trained_by_the_documented_command():
    """The recipe in worlds/toy/world_config.json is the documented command's (step counts and threads aside; and
    --init_vae, the VAE it started from: the chunked world's after 100 decoder steps on 17-frame windows, which the
    documented command's --decoder_steps 100 makes in the same run)."""
    recipe = json.load(open(os.path.join(TOY, "world_config.json")))["recipe"]
    command = vars(fill_generation_defaults(toyworld_parser().parse_args(CAUSAL_COMMAND)))
    sized = {"minutes", "vae_steps", "dit_steps", "decoder_steps", "save_steps", "threads", "init_vae"}
    assert {k: command[k] for k in recipe if k not in sized} == {k: v for k, v in recipe.items() if k not in sized}


CHUNKED_REFUSES = [("--context_noise", "0", "--context_noise applies to --generation causal only"),
                   ("--error_prob", "0", "--error_prob applies to --generation causal"),
                   ("--window", "5", "--window applies to --generation causal"),
                   ("--action_change", "0", "--action_change applies to --generation causal"),
                   ("--dit_motion_weight", "1", "--dit_motion_weight applies to --generation causal"),
                   ("--rollout", "0.5", "--rollout applies to --generation causal")]


@pytest.mark.parametrize("option, value, message", CHUNKED_REFUSES + [
                                                    ("--cond_noise", "-0.1", "--cond_noise must be >= 0"),
                                                    ("--vae_motion_weight", "-0.1", "--vae_motion_weight must be >= 0"),
                                                    ("--vae_thumbnail_weight", "-1", "thumbnail_weight must be >= 0"),
                                                    ("--dit_motion_weight", "nan", "--dit_motion_weight must be >= 0"),
                                                    ("--vae_thumbnail_weight", "nan", "thumbnail_weight must be >= 0"),
                                                    ("--serve_guidance", "0.5", "--serve_guidance must be >= 1"),
                                                    ("--serve_guidance", "nan", "--serve_guidance must be >= 1"),
                                                    ("--serve_guidance_rescale", "1.5", "must be in [0, 1]"),
                                                    ("--serve_guidance_rescale", "nan", "must be in [0, 1]")])
def test_a_bad_option_is_refused_by_name(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        toyworld_main(_tiny_recipe(str(tmp_path), option, value))
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, toyworld.DATA_FILE))  # refused before any work


def test_the_thumbnail_latent_space_and_a_pull_towards_it_are_not_given_together(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        toyworld_main(_tiny_recipe(str(tmp_path), "--latents", "thumbnail", "--vae_thumbnail_weight", "1"))
    assert exit_.value.code == 2 and "give one of them" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, toyworld.DATA_FILE))


@pytest.mark.parametrize("option, value, message", [("--dit_motion_weight", "inf", "motion_weight must be a finite"),
                                                    ("--rollout", "2", "rollout must be a number in [0, 1]")])
def test_a_bad_causal_option_is_refused_by_name(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        toyworld_main(_tiny_recipe(str(tmp_path), "--generation", "causal", option, value))
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, toyworld.DATA_FILE))


def test_spatial_tmod_needs_the_adaln_tmod_injection(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        toyworld_main(_tiny_recipe(str(tmp_path), "--spatial_tmod", "--injection_type", "cross_attn_frame"))
    assert exit_.value.code == 2 and "spatial_tmod: needs injection_type 'adaln_tmod'" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, toyworld.DATA_FILE))  # refused before any work


def test_joint_previous_needs_a_window(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        toyworld_main(_tiny_recipe(str(tmp_path), "--generation", "causal", "--joint_previous", "--window", "0"))
    assert exit_.value.code == 2 and "--joint_previous needs --window >= 1" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, toyworld.DATA_FILE))  # refused before any work


def test_dit_patch_1_trains_a_world_with_a_token_per_latent_cell(tmp_path, capsys):
    toyworld_main(_tiny_recipe(str(tmp_path), "--dit_patch", "1", "--decoder_steps", "0"))
    assert json.load(open(tmp_path / "world_config.json"))["config"]["patch"] == 1
    assert tuple(load_small_world(str(tmp_path)).dit.patch_size) == (1, 1, 1)
    with pytest.raises(SystemExit) as exit_:
        toyworld_main(_tiny_recipe(str(tmp_path / "other"), "--dit_patch", "4"))
    assert exit_.value.code == 2 and "--dit_patch: invalid choice" in capsys.readouterr().err
