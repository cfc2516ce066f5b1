"""training.trainer.forcing: the block-causal objective (windows, per-block noise, teacher forcing, error buffer)."""
import random

import pytest
import torch
from diffsynth.diffusion.flow_match import FlowMatchScheduler

from models.action_format import constant_actions, split_actions
from models.loading import build_pipeline
from models.options import CausalSettings
from training.trainer import forcing as forcing_lib
from training.trainer.forcing import ErrorBuffer, ForcingConfig, causal_loss, sample_window


def clip(frames: int):
    latents = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(2, 48, frames, 4, 4)
    raw = torch.stack([torch.cat([constant_actions(1, {"Forward": 0.001 * (t + 1)}) for t in range(frames - 1)])] * 2)
    return (latents.clone(), *split_actions(raw))  # (2, C, F, h, w), (2, F-1, 8) x 2


def test_a_window_is_the_sink_plus_consecutive_frames_with_their_actions():
    latents, binary, magnitude = clip(9)
    settings = CausalSettings(block_frames=1, window=2)
    starts = set()
    for seed in range(30):
        window, b, m, *_ = sample_window(latents, binary, magnitude, settings, random.Random(seed))
        frames = window[0, 0, :, 0, 0].long().tolist()
        assert len(frames) == 4 and frames[0] == 0 and frames[1:] == list(range(frames[1], frames[1] + 3))
        assert torch.allclose(m[0, :, 0], torch.tensor([0.1 * f for f in frames[1:]]))  # action t drives frame t+1
        starts.add(frames[1])
    assert starts == set(range(1, 7))  # anywhere in the clip
    short = sample_window(*clip(3), settings, random.Random(0))
    assert short[0].shape[2] == 3  # a clip shorter than sink + window + block is taken whole


def test_a_window_knows_each_frames_next_action():
    """For a lookahead controller: the action driving the frame after each kept frame (the sink's: action 0)."""
    latents, binary, magnitude = clip(9)
    settings = CausalSettings(block_frames=1, window=2)
    for seed in range(10):
        window = sample_window(latents, binary, magnitude, settings, random.Random(seed))
        frames = window.latents[0, 0, :, 0, 0].long().tolist()
        expected = [0.1 * (f + 1) if f < 8 else 0.0 for f in frames]  # frame 8 is the video's last: none
        assert torch.allclose(window.ahead_magnitude[0, :, 0], torch.tensor(expected))
        assert torch.equal(window.ahead_binary[0, :, 0], torch.tensor([float(f < 8) for f in frames]))


def held_clip(frames: int, change_at: int):
    """Forward held, then Right from action step ``change_at`` on: one change of the commanded action."""
    latents = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(1, 48, frames, 4, 4)
    raw = torch.cat([constant_actions(1, {"Forward" if t < change_at else "Right": 0.01}) for t in range(frames - 1)])
    return (latents.clone(), *split_actions(raw[None]))  # (1, C, F, h, w), (1, F-1, 8) x 2


def test_first_windows_end_at_each_of_the_streams_first_blocks():
    """The first block (context: the sink only), the second, ... up to a full window: each as a stream makes it."""
    lengths = set()
    for block_frames in (1, 2):
        settings = CausalSettings(block_frames=block_frames, window=2)
        for seed in range(20):
            window = sample_window(*clip(9), settings, random.Random(seed), first_window=1.0)
            frames = window.latents[0, 0, :, 0, 0].long().tolist()
            assert frames == list(range(len(frames))) and window.adjacent  # from the sink on
            assert window.binary.shape[1] == len(frames) - 1 and (len(frames) - 1) % block_frames == 0
            lengths.add((block_frames, len(frames)))
    assert lengths == {(1, 2), (1, 3), (1, 4), (2, 3), (2, 5)}  # every early block; whole blocks only


def test_action_change_windows_end_on_a_block_whose_action_is_new():
    settings = CausalSettings(block_frames=1, window=2)
    starts = set()
    for seed in range(20):
        window, binary, _, adjacent, *_ = sample_window(*held_clip(12, change_at=6), settings, random.Random(seed),
                                          action_change=1.0)
        starts.add(int(window[0, 0, 1, 0, 0]))
        assert not torch.equal(binary[0, -1], binary[0, -2]) and not adjacent  # the last block's action is new
    assert starts == {5}  # the only window whose last block is driven by step 6: frames 5, 6, 7
    anywhere = {int(sample_window(*held_clip(12, change_at=6), settings, random.Random(seed))[0][0, 0, 1, 0, 0])
                for seed in range(40)}
    assert len(anywhere) > 3  # without the bias, windows sit anywhere


def test_error_buffer_keeps_the_newest_residuals():
    buffer = ErrorBuffer(3)
    buffer.add(torch.arange(5.0).view(5, 1, 1, 1))
    assert len(buffer) == 3 and sorted(float(t) for t in buffer.items) == [2.0, 3.0, 4.0]
    assert float(buffer.sample(random.Random(0))) in (2.0, 3.0, 4.0)


@pytest.mark.parametrize("field, value", [("teacher_forcing", 1.5), ("context_noise", -0.1), ("error_prob", "a"),
                                          ("error_buffer", 0), ("first_window", 2.0), ("action_change", -1),
                                          ("motion_weight", -1.0), ("motion_weight", float("nan")),
                                          ("motion_weight", float("inf"))])
def test_forcing_values_are_checked_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        ForcingConfig(**{field: value})


def test_motion_weights_favour_positions_that_change_and_keep_the_loss_scale():
    latents = torch.zeros(1, 48, 3, 2, 2)  # (B, C, F, h, w)
    latents[:, :, 2, 0, 0] = 1.0  # frame 2 differs from frame 1 at one position of four
    in_loss = torch.tensor([[False, False, True]])
    weights = forcing_lib.motion_weights(latents, in_loss, 1.0)  # (B, F, h, w)
    assert torch.allclose(weights[0, 2], torch.tensor([[2.5, 0.5], [0.5, 0.5]]))  # (1 + 1 x m / 0.25) / 2
    assert weights[0, 2].mean().item() == pytest.approx(1.0)
    assert torch.allclose(weights[0, :2], torch.full((2, 2, 2), 0.5))  # no change: the base weight


@pytest.mark.parametrize("motion_weight, ratio", [(0.0, 1.0), (1.0, 5.0), (3.0, 13.0)])
def test_with_a_motion_weight_an_error_where_the_clip_moves_costs_more(monkeypatch, motion_weight, ratio):
    """One wrong latent position in the noised block: where the true clip moved, it costs 1 + 4 x motion_weight
    times what it costs where nothing moved (one position of four moved)."""
    pipe = build_pipeline(preset="tiny")
    scheduler = FlowMatchScheduler("Wan")
    scheduler.set_timesteps(1000, training=True)
    latents = torch.zeros(2, 48, 4, 2, 2)  # (B, C, F, h, w)
    latents[:, :, 3, 0, 0] = 1.0  # the last frame moved at (0, 0)
    _, binary, magnitude = clip(4)
    config = ForcingConfig(teacher_forcing=1.0, context_noise=0.0, error_prob=0.0, motion_weight=motion_weight)
    losses = []
    for position in ((0, 0), (1, 1)):
        def wrong_at(dit, controller, noisy, timesteps, *args, position=position, **kwargs):
            sigma = (timesteps / 1000)[:, None, :, None, None]  # (B, 1, F, 1, 1)
            target = (noisy - latents) / sigma.clamp_min(1e-6)  # noise - clean where noised (the last frame)
            target[:, :, 3, position[0], position[1]] += 1.0
            return target
        monkeypatch.setattr(forcing_lib, "model_fn_causal", wrong_at)
        torch.manual_seed(0)
        losses.append(causal_loss(pipe.dit, pipe.action_controller, scheduler, latents, torch.zeros(2, 8, 32), binary,
                                  magnitude, CausalSettings(block_frames=1, window=2), config, None,
                                  random.Random(0)).item())
    assert losses[1] > 0 and losses[0] / losses[1] == pytest.approx(ratio, rel=1e-3)


def test_teacher_forcing_noises_the_last_block_only_and_fills_the_error_buffer(monkeypatch):
    pipe = build_pipeline(preset="tiny")
    scheduler = FlowMatchScheduler("Wan")
    scheduler.set_timesteps(1000, training=True)
    settings = CausalSettings(block_frames=1, window=2)
    seen = {}

    def spy(dit, controller, noisy, timesteps, *args, **kwargs):
        seen["timesteps"] = timesteps.clone()
        return torch.zeros_like(noisy)
    monkeypatch.setattr(forcing_lib, "model_fn_causal", spy)
    latents, binary, magnitude = clip(4)
    errors = ErrorBuffer(16)
    config = ForcingConfig(teacher_forcing=1.0, context_noise=0.1, error_prob=1.0)
    causal_loss(pipe.dit, pipe.action_controller, scheduler, latents, torch.zeros(2, 8, 32), binary, magnitude,
                settings, config, errors, random.Random(0))
    t = seen["timesteps"]  # (B, F)
    assert (t[:, 0] == 0).all() and (t[:, 1:3] <= 100).all() and (t[:, 3] > 0).all()
    assert len(errors) == 2  # one residual per frame in the loss: the last frame of each clip
    diffusion = ForcingConfig(teacher_forcing=0.0, context_noise=0.0, error_prob=0.0)
    torch.manual_seed(1)
    causal_loss(pipe.dit, pipe.action_controller, scheduler, latents, torch.zeros(2, 8, 32), binary, magnitude,
                settings, diffusion, None, random.Random(0))
    assert (seen["timesteps"][:, 0] == 0).all() and len(set(seen["timesteps"][0, 1:].tolist())) == 3


def test_the_next_actions_reach_the_context_frames_only(monkeypatch):
    pipe = build_pipeline(preset="tiny")
    scheduler = FlowMatchScheduler("Wan")
    scheduler.set_timesteps(1000, training=True)
    seen = {}

    def spy(dit, controller, noisy, *args, **kwargs):
        seen["ahead"] = args[-1]
        return torch.zeros_like(noisy)
    monkeypatch.setattr(forcing_lib, "model_fn_causal", spy)
    latents, binary, magnitude = clip(5)
    window = sample_window(latents, binary, magnitude, CausalSettings(block_frames=2, window=2), random.Random(0))
    causal_loss(pipe.dit, pipe.action_controller, scheduler, window.latents, torch.zeros(2, 8, 32), window.binary,
                window.magnitude, CausalSettings(block_frames=2, window=2), ForcingConfig(), None, random.Random(0),
                ahead_binary=window.ahead_binary, ahead_magnitude=window.ahead_magnitude)
    ahead_binary, _, present = seen["ahead"]
    assert ahead_binary is window.ahead_binary
    assert present.tolist() == [[True, True, True, False, False]] * 2  # the last block (frames 3, 4) is denoised


def test_a_first_frame_far_from_the_sink_stays_out_of_the_diffusion_forcing_loss(monkeypatch):
    """Its action (a motion relative to a frame it cannot see) is unreadable: trained on, it teaches ignoring keys."""
    pipe = build_pipeline(preset="tiny")
    scheduler = FlowMatchScheduler("Wan")
    scheduler.set_timesteps(1000, training=True)
    monkeypatch.setattr(forcing_lib, "model_fn_causal", lambda dit, ctrl, noisy, *a, **k: torch.zeros_like(noisy))
    latents, binary, magnitude = clip(4)
    diffusion = ForcingConfig(teacher_forcing=0.0, context_noise=0.0, error_prob=0.0)
    in_loss = {}
    for adjacent in (True, False):
        errors = ErrorBuffer(16)  # one residual per frame in the loss
        causal_loss(pipe.dit, pipe.action_controller, scheduler, latents, torch.zeros(2, 8, 32), binary, magnitude,
                    CausalSettings(block_frames=1, window=2), diffusion, errors, random.Random(0),
                    adjacent=torch.tensor([adjacent, True]))
        in_loss[adjacent] = len(errors)
    assert in_loss == {True: 6, False: 5}  # frames 1-3 of both clips; frame 1 of the far clip left out


def test_the_loss_trains_the_dit_and_the_controller():
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0})
    pipe.dit.train().requires_grad_(True)
    pipe.action_controller.train().requires_grad_(True)
    scheduler = FlowMatchScheduler("Wan")
    scheduler.set_timesteps(1000, training=True)
    latents = torch.randn(2, 48, 4, 4, 4)
    _, binary, magnitude = clip(4)
    loss = causal_loss(pipe.dit, pipe.action_controller, scheduler, latents, torch.zeros(2, 8, 32), binary,
                       magnitude, CausalSettings(block_frames=1, window=2), ForcingConfig(), ErrorBuffer(8),
                       random.Random(0))
    loss.backward()
    assert torch.isfinite(loss) and pipe.dit.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert pipe.action_controller.action_embed[0].weight.grad.abs().sum() > 0


def test_the_loss_trains_the_lookahead():
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0, "lookahead": True})
    pipe.action_controller.train().requires_grad_(True)
    scheduler = FlowMatchScheduler("Wan")
    scheduler.set_timesteps(1000, training=True)
    window = sample_window(torch.randn(2, 48, 6, 4, 4), *clip(6)[1:], CausalSettings(block_frames=1, window=2),
                           random.Random(0))
    loss = causal_loss(pipe.dit, pipe.action_controller, scheduler, window.latents, torch.zeros(2, 8, 32),
                       window.binary, window.magnitude, CausalSettings(block_frames=1, window=2),
                       ForcingConfig(teacher_forcing=1.0), None, random.Random(0),
                       ahead_binary=window.ahead_binary, ahead_magnitude=window.ahead_magnitude)
    loss.backward()
    assert pipe.action_controller.ahead_to_tmod.weight.grad.abs().sum() > 0  # zero init, yet it learns


def own_context_loss(latents, rollout: float, error_prob: float = 0.0, errors=None) -> float:
    """The teacher-forced loss of a tiny world's clip (sink, 3 context frames, the last block), seeds fixed."""
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0, "injection_type": "adaln_tmod"})
    scheduler = FlowMatchScheduler("Wan")
    scheduler.set_timesteps(1000, training=True)
    _, binary, magnitude = clip(5)
    config = ForcingConfig(teacher_forcing=1.0, context_noise=0.0, error_prob=error_prob, rollout=rollout,
                           rollout_steps=2)
    torch.manual_seed(0)
    return causal_loss(pipe.dit, pipe.action_controller, scheduler, latents, torch.zeros(2, 8, 32), binary, magnitude,
                       CausalSettings(block_frames=1, window=3), config, errors, random.Random(0)).item()


def test_with_rollouts_the_context_is_the_models_own_and_the_true_context_is_never_read():
    latents = torch.randn(2, 48, 5, 4, 4)
    changed = latents.clone()
    changed[:, :, 1:4] += 3.0  # the true context frames
    assert own_context_loss(latents, 1.0) == own_context_loss(changed, 1.0)
    assert own_context_loss(latents, 0.0) != own_context_loss(changed, 0.0)  # teacher forcing reads them
    assert own_context_loss(latents, 1.0) != own_context_loss(latents, 0.0)


def test_the_error_buffer_leaves_generated_context_alone():
    """Generated frames already carry the model's own errors: no stored residual is added to them."""
    latents = torch.randn(2, 48, 5, 4, 4)
    errors = ErrorBuffer(4)
    errors.add(torch.full((1, 48, 4, 4), 10.0))
    with_buffer = own_context_loss(latents, 1.0, error_prob=1.0, errors=errors)
    assert with_buffer == own_context_loss(latents, 1.0)
    errors = ErrorBuffer(4)
    errors.add(torch.full((1, 48, 4, 4), 10.0))
    assert own_context_loss(latents, 0.0, error_prob=1.0, errors=errors) != own_context_loss(latents, 0.0)


@pytest.mark.parametrize("field, value", [("rollout", 1.5), ("rollout", -0.1), ("rollout_steps", 0),
                                          ("rollout_guidance", 0.5), ("rollout_rescale", 2.0)])
def test_rollout_values_are_checked_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        ForcingConfig(**{field: value})
