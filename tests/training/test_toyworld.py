"""The toy-world recipe end to end at a tiny size, and the committed worlds/toy/ (CPU)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from models.tiny import load_small_world
from training import toyworld

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(REPO, "worlds", "toy")
SCENES = 2  # rendered first frames per flight in the steering test
YAW_MIN, PITCH_MIN = 0.3, 0.3  # degrees per interval read back by optical flow (asked for ~9: it moves less)


def _generate(pipe, height, width, frames, steps=1):
    first = Image.fromarray(np.random.RandomState(0).randint(0, 255, (height, width, 3), dtype=np.uint8))
    actions = np.zeros(((frames - 1) // 4, 2, 8), dtype=np.float32)
    actions[:, :, 0] = (1.0, 0.01)  # Forward
    return pipe(prompt="a drone flies over a green meadow", input_image=first, height=height, width=width,
                num_frames=frames, num_inference_steps=steps, seed=0, cfg_scale=1.0, actions=actions,
                output_type="floatpoint", tiled=False, progress_bar_cmd=lambda it: it)


def _tiny_recipe(out, *extra):
    return ["--out", out, "--height", "32", "--width", "32", "--frames", "5", "--clips", "3", "--holdout", "2",
            "--vae_dim", "8", "--dim", "48", "--heads", "1", "--layers", "1", "--vae_steps", "2", "--dit_steps", "3",
            "--vae_batch", "1", "--batch", "2", "--save_steps", "1", "--speed", "4", "--decoder_steps", "2",
            "--injection_type", "adaln_tmod", "--no_progress", *extra]


def _weights(folder):
    from safetensors.torch import load_file
    return {name: load_file(os.path.join(folder, name)) for name in ("dit.safetensors", "vae.safetensors",
                                                                      "action_controller.safetensors")}


def test_recipe_is_deterministic_and_an_interrupted_run_resumes_to_the_same_world(tmp_path, monkeypatch):
    from training import toyworld_stages
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    assert toyworld.main(_tiny_recipe(whole)) == 0
    report = json.load(open(os.path.join(whole, "toyworld_report.json")))
    assert report["plan"] == {"vae_steps": 2, "dit_steps": 3, "decoder_steps": 2}
    assert report["decoder_loss_first10"] is not None
    assert np.isfinite(report["vae_psnr_heldout_db"]) and np.isfinite(report["dit_loss_last10pct"])
    pipe = load_small_world(whole)
    assert pipe.action_controller is not None and pipe.action_stats is not None
    video = _generate(pipe, 32, 32, 5)
    assert video.shape == (1, 3, 5, 32, 32) and torch.isfinite(video).all()
    hints = json.load(open(os.path.join(whole, "serve.json")))
    assert (hints["height"], hints["width"], hints["chunk_frames"]) == (32, 32, 5)
    assert hints["sample"] == toyworld.SERVE_SAMPLE and "32x32" in hints["weights"]
    assert hints["action_guidance"] == toyworld.build_parser().get_default("serve_guidance")
    assert hints["action_guidance_rescale"] == toyworld.build_parser().get_default("serve_guidance_rescale")
    data = np.load(os.path.join(whole, toyworld.DATA_FILE))
    magnitudes = data["actions"][:, :, 1]  # (clips, T, 8); --speed 4 scales the ranges' low ends too
    assert magnitudes[:, :, :4][magnitudes[:, :, :4] > 0].min(initial=1.0) >= 4 * 0.005 - 1e-6
    assert magnitudes[:, :, 4:][magnitudes[:, :, 4:] > 0].min(initial=9.0) >= 4 * 0.4 - 1e-6
    forward, calls = toyworld_stages.DitStage.forward, []

    def crash_on_second_step(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the machine went away during DiT step 2 (step 1 is checkpointed)
        return forward(self, batch)

    monkeypatch.setattr(toyworld_stages.DitStage, "forward", crash_on_second_step)
    try:
        toyworld.main(_tiny_recipe(broken))
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(toyworld_stages.DitStage, "forward", forward)
    state = torch.load(os.path.join(broken, toyworld.STATE_FILE), weights_only=False)["state"]
    assert (state["stage"], state["step"]) == ("dit", 1)
    assert state["times"]["dit"] > 0  # the time before the interruption is kept ...
    assert toyworld.main(_tiny_recipe(broken)) == 0  # the same command resumes
    resumed = json.load(open(os.path.join(broken, "toyworld_report.json")))["times_s"]
    assert resumed["dit"] > state["times"]["dit"]  # ... and counted in the resumed run's report
    first, second = _weights(whole), _weights(broken)
    for name in first:
        assert first[name].keys() == second[name].keys()
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key]), (name, key)


def test_the_defaults_are_the_committed_worlds_recipe():
    """`python -m training.toyworld --out DIR` trains what worlds/toy/ was trained with (step counts aside: those
    follow --minutes when not given; and the VAE learning rate: the committed VAE was fine-tuned at 5e-4 from an
    earlier world's VAE trained at the default 1e-3, see docs/toyworld.md "How it actually ran")."""
    recipe = json.load(open(os.path.join(TOY, "world_config.json")))["recipe"]
    defaults = vars(toyworld.build_parser().parse_args(["--out", "somewhere"]))
    sized = {"minutes", "vae_steps", "dit_steps", "decoder_steps", "save_steps", "threads", "vae_lr"}
    assert {k: defaults[k] for k in recipe if k not in sized} == {k: v for k, v in recipe.items() if k not in sized}


def test_decoder_stage_trains_the_decoder_only():
    from models.tiny import SmallWorldConfig, build_world_modules
    from training.toyworld_stages import DecoderStage
    torch.manual_seed(0)
    _, vae, _, _ = build_world_modules(SmallWorldConfig(vae_dim=8, vae_dec_dim=8))
    stage = DecoderStage(vae)
    before = {k: v.clone() for k, v in vae.model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in stage.parameters() if p.requires_grad], lr=0.1)
    stage(torch.rand(1, 3, 5, 32, 32) * 2 - 1).backward()
    optimizer.step()
    after = vae.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"decoder", "conv2"}  # encoder + conv1 untouched: the DiT's latent space is kept


def test_cond_noise_perturbs_only_the_first_frame_and_zero_keeps_it_clean(monkeypatch):
    """--cond_noise: the fused first frame's latent gets noise of std <= cond_noise; 0 is the clean stage."""
    from models.tiny import build_tiny_controller, build_tiny_pipeline
    from training import toyworld_stages
    seen = []
    monkeypatch.setattr(toyworld_stages, "FlowMatchSFTLoss",
                        lambda pipe, **inputs: seen.append(inputs) or torch.zeros(()))
    pipe = build_tiny_pipeline()
    latents = torch.randn(4, 48, 2, 4, 4)  # (B, C, f, h, w)
    for cond_noise in (0.0, 0.5):
        toyworld_stages.DitStage(pipe, build_tiny_controller(), cond_noise)((latents, None, None, None))
    clean, noisy = seen
    assert torch.equal(clean["first_frame_latents"], latents[:, :, :1])
    assert torch.equal(noisy["input_latents"], latents)  # the frames to generate stay the data
    deviation = (noisy["first_frame_latents"] - latents[:, :, :1]).flatten(1).std(1)  # (B,): each clip's sigma
    assert (deviation > 0).all() and (deviation < 0.5 * 1.2).all()


@pytest.mark.parametrize("option, value, message", [("--cond_noise", "-0.1", "--cond_noise must be >= 0"),
                                                    ("--vae_motion_weight", "-0.1", "--vae_motion_weight must be >= 0"),
                                                    ("--serve_guidance", "0.5", "--serve_guidance must be >= 1"),
                                                    ("--serve_guidance", "nan", "--serve_guidance must be >= 1"),
                                                    ("--serve_guidance_rescale", "1.5", "must be in [0, 1]"),
                                                    ("--serve_guidance_rescale", "nan", "must be in [0, 1]")])
def test_a_bad_option_is_refused_by_name(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        toyworld.main(_tiny_recipe(str(tmp_path), option, value))
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, toyworld.DATA_FILE))  # refused before any work


def test_motion_loss_penalises_a_static_reconstruction_and_not_a_moving_one():
    """--vae_motion_weight: a decoder that blurs a latent frame's 4 frames into one still picture pays for the
    lost frame-to-frame change; a reconstruction off by a constant (same motion) pays only the pixel loss."""
    from training.toyworld_stages import reconstruction_loss
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1  # (B, 3, F, H, W)
    static = x[:, :, :1].expand_as(x).clone()  # every frame = the first
    shifted = x + 0.1
    assert reconstruction_loss(x, x, 2.0) == 0
    pixel_only = reconstruction_loss(static, x, 0.0)
    motion = torch.nn.functional.l1_loss(static.diff(dim=2), x.diff(dim=2))
    assert torch.isclose(reconstruction_loss(static, x, 2.0), pixel_only + 2.0 * motion)
    assert torch.isclose(reconstruction_loss(shifted, x, 2.0), reconstruction_loss(shifted, x, 0.0))


def test_committed_toy_world_loads_and_generates():
    hints = json.load(open(os.path.join(TOY, "serve.json")))
    pipe = load_small_world(TOY)
    assert pipe.action_controller is not None
    h, w, f = hints["height"], hints["width"], hints["chunk_frames"]
    video = _generate(pipe, h, w, f, steps=2)
    assert video.shape == (1, 3, f, h, w) and torch.isfinite(video).all()
    assert video.abs().max() <= 1.0 + 1e-5


def test_committed_toy_world_follows_opposite_actions():
    """The shipped world steers: from the same held-out rendered first frames, optical flow on its chunks reads
    yaw left vs yaw right and pitch up vs pitch down in opposite directions (magnitudes: what a held key sends)."""
    from training.eval_suite import generate_clip, rendered_first_frames, suite_actions, suite_magnitudes
    from training.flow_actions import FlowSettings, estimate_motion
    hints = json.load(open(os.path.join(TOY, "serve.json")))
    pipe = load_small_world(TOY)
    magnitudes = suite_magnitudes(pipe.action_stats)
    h, w, f = hints["height"], hints["width"], hints["chunk_frames"]
    steps = (f - 1) // 4

    def motion(flight, axis):
        values = []
        for _, first, prompt in rendered_first_frames(SCENES, h, w, seed=0):
            frames = generate_clip(pipe, first, prompt, suite_actions(flight, steps, magnitudes), f, hints["steps"],
                                   seed=0, cfg_scale=1.0, action_guidance=hints.get("action_guidance", 1.0),
                                   action_guidance_rescale=hints.get("action_guidance_rescale", 0.0))
            values.append(float(estimate_motion(frames, FlowSettings(stride=1))[axis].mean()))
        return np.mean(values)

    assert motion("yaw_left", "yaw") < -YAW_MIN < YAW_MIN < motion("yaw_right", "yaw")  # degrees per interval
    assert motion("pitch_down", "pitch") < -PITCH_MIN < PITCH_MIN < motion("pitch_up", "pitch")


def test_samples_are_the_committed_first_frames(tmp_path, capsys):
    from training import toyworld_samples
    assert toyworld_samples.main(["--world", TOY, "--out", str(tmp_path)]) == 0
    for index in (1, 2, 3):  # the committed web/samples are exactly what the command writes
        written = np.asarray(Image.open(tmp_path / f"synthetic-{index}.png"))
        assert np.array_equal(written, np.asarray(Image.open(os.path.join(REPO, "web", "samples",
                                                                           f"synthetic-{index}.png"))))
    hints = json.load(open(os.path.join(TOY, "serve.json")))
    assert f"{hints['sample']}.png: {hints['prompt']}" in capsys.readouterr().out  # serve.json's prompt is its own
    with pytest.raises(SystemExit) as exit_:
        toyworld_samples.main(["--world", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--world:" in error and "serve.json not found" in error


def test_server_registers_the_toy_world():
    from server import worlds
    assert "toy" in worlds.WORLD_FACTORIES and worlds.default_world() == "toy"
