"""training.smallworld.stages: the losses of the toy world's stages."""
import torch

from models.small_world import SmallWorldConfig, build_world_modules
from models.tiny import build_tiny_controller, build_tiny_pipeline
from training.smallworld import stages as toyworld_stages
from training.smallworld.stages import DecoderStage, reconstruction_loss


def test_decoder_stage_trains_the_decoder_only():
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


def test_motion_loss_penalises_a_static_reconstruction_and_not_a_moving_one():
    """--vae_motion_weight: a decoder that blurs a latent frame's 4 frames into one still picture pays for the
    lost frame-to-frame change; a reconstruction off by a constant (same motion) pays only the pixel loss."""
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1  # (B, 3, F, H, W)
    static = x[:, :, :1].expand_as(x).clone()  # every frame = the first
    shifted = x + 0.1
    assert reconstruction_loss(x, x, 2.0) == 0
    pixel_only = reconstruction_loss(static, x, 0.0)
    motion = torch.nn.functional.l1_loss(static.diff(dim=2), x.diff(dim=2))
    assert torch.isclose(reconstruction_loss(static, x, 2.0), pixel_only + 2.0 * motion)
    assert torch.isclose(reconstruction_loss(shifted, x, 2.0), reconstruction_loss(shifted, x, 0.0))
