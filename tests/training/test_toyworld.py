"""python -m training.toyworld: the defaults are the committed recipe; bad options are refused by name."""
import json
import os

import pytest

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


def test_the_defaults_are_the_committed_worlds_recipe():
    """`python -m training.toyworld --out DIR` trains what worlds/toy/ was trained with (step counts aside: those
    follow --minutes when not given; and the VAE learning rate: the committed VAE was fine-tuned at 5e-4 from an
    earlier world's VAE trained at the default 1e-3, see docs/toyworld.md "How it actually ran"; and --init_vae,
    the VAE it started from)."""
    recipe = json.load(open(os.path.join(TOY, "world_config.json")))["recipe"]
    defaults = vars(fill_generation_defaults(toyworld_parser().parse_args(["--out", "somewhere"])))
    sized = {"minutes", "vae_steps", "dit_steps", "decoder_steps", "save_steps", "threads", "vae_lr", "init_vae"}
    assert {k: defaults[k] for k in recipe if k not in sized} == {k: v for k, v in recipe.items() if k not in sized}


CHUNKED_REFUSES = [("--context_noise", "0", "--context_noise applies to --generation causal only"),
                   ("--error_prob", "0", "--error_prob applies to --generation causal"),
                   ("--window", "5", "--window applies to --generation causal"),
                   ("--action_change", "0", "--action_change applies to --generation causal")]


@pytest.mark.parametrize("option, value, message", CHUNKED_REFUSES + [
                                                    ("--cond_noise", "-0.1", "--cond_noise must be >= 0"),
                                                    ("--vae_motion_weight", "-0.1", "--vae_motion_weight must be >= 0"),
                                                    ("--serve_guidance", "0.5", "--serve_guidance must be >= 1"),
                                                    ("--serve_guidance", "nan", "--serve_guidance must be >= 1"),
                                                    ("--serve_guidance_rescale", "1.5", "must be in [0, 1]"),
                                                    ("--serve_guidance_rescale", "nan", "must be in [0, 1]")])
def test_a_bad_option_is_refused_by_name(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        toyworld_main(_tiny_recipe(str(tmp_path), option, value))
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, toyworld.DATA_FILE))  # refused before any work
