"""training.smallworld.recipe end to end at a tiny size, and what the committed worlds/toy/ does (CPU)."""
import json
import os

import numpy as np
import pytest
import torch

from models.serve_config import load_serve_config
from models.small_world import load_small_world
from training.evaluation.flow import FlowSettings, estimate_motion
from training.evaluation.sources import rendered_first_frames
from training.evaluation.suite import generate_clip, suite_actions, suite_magnitudes
from training.smallworld import recipe as toyworld
from training.smallworld import stages as toyworld_stages
from training.toyworld import build_parser as toyworld_parser
from training.toyworld import fill_generation_defaults
from training.toyworld import main as toyworld_main

YAW_MIN, PITCH_MIN = 0.3, 0.3  # degrees per interval read back by optical flow (asked for ~9: it moves less)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


TOY = os.path.join(REPO, "worlds", "toy")


SCENES = 2  # rendered first frames per flight in the steering test


def _tiny_recipe(out, *extra):
    return ["--out", out, "--height", "32", "--width", "32", "--clips", "3", "--holdout", "2",
            "--vae_dim", "8", "--dim", "48", "--heads", "1", "--layers", "1", "--vae_steps", "2", "--dit_steps", "3",
            "--vae_batch", "1", "--batch", "2", "--save_steps", "1", "--speed", "4", "--decoder_steps", "2",
            "--injection_type", "adaln_tmod", "--no_progress", *extra]


def _weights(folder):
    from safetensors.torch import load_file
    return {name: load_file(os.path.join(folder, name)) for name in ("dit.safetensors", "vae.safetensors",
                                                                      "action_controller.safetensors")}


GENERATIONS = {"chunked": ("--generation", "chunked", "--frames", "5"),
               "causal": ("--generation", "causal", "--frames", "9", "--window", "1", "--decoder_frames", "5")}


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_recipe_is_deterministic_and_an_interrupted_run_resumes_to_the_same_world(tmp_path, monkeypatch, forward_clip,
                                                                                  generation):
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    extra = GENERATIONS[generation]
    assert toyworld_main(_tiny_recipe(whole, *extra)) == 0
    report = json.load(open(os.path.join(whole, "toyworld_report.json")))
    assert report["plan"] == {"vae_steps": 2, "dit_steps": 3, "decoder_steps": 2}
    assert report["decoder_loss_first10"] is not None
    assert np.isfinite(report["vae_psnr_heldout_db"]) and np.isfinite(report["dit_loss_last10pct"])
    pipe = load_small_world(whole)
    assert pipe.action_controller is not None and pipe.action_stats is not None
    video = forward_clip(pipe, 32, 32, 5)
    assert video.shape == (1, 3, 5, 32, 32) and torch.isfinite(video).all()
    hints = json.load(open(os.path.join(whole, "serve.json")))
    assert (hints["height"], hints["width"], hints["chunk_frames"], hints["generation"]) == (32, 32, 5, generation)
    if generation == "causal":
        assert (hints["block_frames"], hints["window"], hints["sink"], hints["autoregressive"]) == (1, 1, True, False)
        stream = pipe.open_stream(np.zeros((32, 32, 3), np.uint8), "a field", steps=1, window=1)
        assert stream.step(np.zeros((1, 2, 8))).shape == (5, 32, 32, 3)
    assert hints["sample"] == toyworld.SERVE_SAMPLE and "32x32" in hints["weights"]
    assert hints["action_guidance"] == toyworld_parser().get_default("serve_guidance")
    assert hints["action_guidance_rescale"] == toyworld_parser().get_default("serve_guidance_rescale")
    data = np.load(os.path.join(whole, toyworld.DATA_FILE))
    magnitudes = data["actions"][:, :, 1]  # (clips, T, 8); --speed 4 scales the ranges' low ends too
    assert magnitudes[:, :, :4][magnitudes[:, :, :4] > 0].min(initial=1.0) >= 4 * 0.005 - 1e-6
    assert magnitudes[:, :, 4:][magnitudes[:, :, 4:] > 0].min(initial=9.0) >= 4 * 0.4 - 1e-6
    stage = toyworld_stages.CausalDitStage if generation == "causal" else toyworld_stages.DitStage
    forward, calls = stage.forward, []

    def crash_on_second_step(self, batch, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the machine went away during DiT step 2 (step 1 is checkpointed)
        return forward(self, batch, *args)

    monkeypatch.setattr(stage, "forward", crash_on_second_step)
    try:
        toyworld_main(_tiny_recipe(broken, *extra))
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(stage, "forward", forward)
    state = torch.load(os.path.join(broken, toyworld.STATE_FILE), weights_only=False)["state"]
    assert (state["stage"], state["step"]) == ("dit", 1)
    assert state["times"]["dit"] > 0  # the time before the interruption is kept ...
    assert toyworld_main(_tiny_recipe(broken, *extra)) == 0  # the same command resumes
    resumed = json.load(open(os.path.join(broken, "toyworld_report.json")))["times_s"]
    assert resumed["dit"] > state["times"]["dit"]  # ... and counted in the resumed run's report
    first, second = _weights(whole), _weights(broken)
    for name in first:
        assert first[name].keys() == second[name].keys()
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key]), (name, key)


def test_a_causal_world_starts_from_a_chunked_worlds_dit_and_controller(tmp_path):
    """--init_dit: the stream's first block is the chunked world's task, so a causal run can start from it."""
    base, causal = str(tmp_path / "base"), str(tmp_path / "causal")
    assert toyworld_main(_tiny_recipe(base, "--generation", "chunked", "--frames", "9")) == 0  # the same scenes
    args = _tiny_recipe(causal, *GENERATIONS["causal"], "--init_dit", base, "--init_vae", base, "--lookahead",
                        "--vae_thumbnail_weight", "1")
    run = toyworld.ToyRun(fill_generation_defaults(toyworld_parser().parse_args(args)))
    chunked = _weights(base)
    for name, module in (("dit.safetensors", run.pipe.dit), ("action_controller.safetensors", run.controller)):
        state = module.state_dict()
        assert all(torch.equal(state[k], chunked[name][k]) for k in chunked[name]), name
    assert not run.controller.ahead_to_tmod.weight.any()  # the new lookahead starts at zero: the same world
    at = args.index("--vae_steps")
    skip = args[:at] + args[at + 2:]  # --init_vae alone skips the VAE stage
    assert toyworld.ToyRun(fill_generation_defaults(toyworld_parser().parse_args(skip))).plan(None, None)[
        "vae_steps"] == 0
    assert toyworld_main(args) == 0  # --init_vae with --vae_steps 2: that VAE, fine-tuned 2 steps
    assert json.load(open(os.path.join(causal, "toyworld_report.json")))["plan"]["vae_steps"] == 2
    assert not torch.equal(_weights(causal)["vae.safetensors"]["encoder.conv1.weight"],
                           chunked["vae.safetensors"]["encoder.conv1.weight"])
    trained = load_small_world(causal).action_controller
    assert trained.config.lookahead and trained.ahead_to_tmod.weight.abs().sum() > 0  # it trained
    recipe = json.load(open(os.path.join(causal, "world_config.json")))["recipe"]
    assert recipe["init_dit"] == base and recipe["generation"] == "causal"
    assert recipe["vae_thumbnail_weight"] == 1  # the fine-tuned VAE's latents were pulled to the thumbnail code
    with pytest.raises(ValueError, match="--init_dit"):
        toyworld_main(_tiny_recipe(str(tmp_path / "wider"), *GENERATIONS["causal"], "--dim", "96", "--init_dit", base))


def test_a_thumbnail_world_trains_its_dit_on_the_code_and_its_decoder_to_draw_it(tmp_path):
    """--latents thumbnail: the DiT's latents are the frames' thumbnail code (no encoder involved), and the decoder
    stage fine-tunes the decoder on the code too."""
    out = str(tmp_path / "code")
    assert toyworld_main(_tiny_recipe(out, "--latents", "thumbnail", "--frames", "5")) == 0
    data = np.load(os.path.join(out, toyworld.DATA_FILE))
    cached = torch.load(os.path.join(out, toyworld.LATENTS_FILE), weights_only=True)
    code = toyworld_stages.thumbnail_latents(toyworld_stages.to_video_tensor(data["frames"]))  # (3, 48, 2, 2, 2)
    assert torch.allclose(cached["latents"], code)
    recipe = json.load(open(os.path.join(out, "world_config.json")))["recipe"]
    assert recipe["latents"] == "thumbnail"
    report = json.load(open(os.path.join(out, "toyworld_report.json")))
    assert report["plan"]["decoder_steps"] == 2 and np.isfinite(report["vae_psnr_heldout_db"])


def test_committed_toy_world_follows_opposite_actions():
    """The shipped world steers as it is served (a causal world: through a stream): from the same held-out rendered
    first frames, optical flow on its first block reads yaw left vs yaw right and pitch up vs pitch down in opposite
    directions (magnitudes: what a held key sends)."""
    serve = load_serve_config(TOY)
    assert serve.generation == "causal"  # the demo's default flies one stream per flight
    pipe = load_small_world(TOY)
    magnitudes = suite_magnitudes(pipe.action_stats)
    h, w, f = serve.height, serve.width, serve.chunk_frames
    steps = (f - 1) // 4

    def motion(flight, axis):
        values = []
        for _, first, prompt in rendered_first_frames(SCENES, h, w, seed=0):
            frames = generate_clip(pipe, first, prompt, suite_actions(flight, steps, magnitudes), f, serve.steps,
                                   seed=0, cfg_scale=1.0, action_guidance=serve.action_guidance,
                                   action_guidance_rescale=serve.action_guidance_rescale,
                                   causal=serve.causal_settings())
            values.append(float(estimate_motion(frames, FlowSettings(stride=1))[axis].mean()))
        return np.mean(values)

    assert motion("yaw_left", "yaw") < -YAW_MIN < YAW_MIN < motion("yaw_right", "yaw")  # degrees per interval
    assert motion("pitch_down", "pitch") < -PITCH_MIN < PITCH_MIN < motion("pitch_up", "pitch")
