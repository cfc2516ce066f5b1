"""training.smallworld.stages: the losses of the toy world's stages."""
import numpy as np
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


def test_thumbnail_latents_hold_each_frames_pixel_means_in_place():
    """--vae_thumbnail_weight's target: latent 0 = frame 0's 4x4-pixel means, latent t = frames 4t-3..4t's 8x8-pixel
    means, frame-major; a frame's own brightness lands in its own channels and cells, nowhere else."""
    frames = torch.arange(9, dtype=torch.float32).div(10).view(1, 1, 9, 1, 1)  # frame k is grey k / 10
    x = frames.expand(1, 3, 9, 32, 48).clone()  # (B, 3, F, H, W)
    x[0, 0, 5, :8, 8:16] = -1.0  # frame 5: red of the block right of the top-left one
    z = toyworld_stages.thumbnail_latents(x)
    assert z.shape == (1, 48, 3, 2, 3)  # (B, C, 1 + 2, H/16, W/16)
    scale = toyworld_stages.THUMBNAIL_SCALE
    assert torch.allclose(z[:, :, 0], torch.zeros_like(z[:, :, 0]))  # frame 0 is grey 0
    for t in (1, 2):
        for j in range(4):  # frame 4t-3+j: channels 12j .. 12j+11
            value = scale * (4 * t - 3 + j) / 10
            cells = z[0, 12 * j:12 * j + 12, t]  # (12, h, w)
            expected = torch.full_like(cells, value)
            if (t, j) == (2, 0):  # frame 5: sub-cell (0, 1) of cell (0, 0), red = channel 0 * 4 + 1
                expected[1, 0, 0] = -scale
            assert torch.allclose(cells, expected)


def test_thumbnail_weight_adds_the_latents_distance_to_the_code():
    torch.manual_seed(0)
    _, vae, _, _ = build_world_modules(SmallWorldConfig(vae_dim=8, vae_dec_dim=8))
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    losses = []
    for weight in (0.0, 2.0):
        torch.manual_seed(1)  # the same decoder noise
        losses.append(toyworld_stages.VaeStage(vae, 1.0, weight)(x))
    with torch.no_grad():
        z = vae.model.encode(x, vae.scale)
    expected = 2.0 * torch.nn.functional.mse_loss(z, toyworld_stages.thumbnail_latents(x))
    assert torch.isclose(losses[1] - losses[0], expected, rtol=1e-4)


def test_code_latents_decode_the_code_and_teach_the_encoder_to_produce_it():
    """--latents thumbnail: the decoder learns code -> frames, the encoder frames -> code, each from its own loss."""
    torch.manual_seed(0)
    _, vae, _, _ = build_world_modules(SmallWorldConfig(vae_dim=8, vae_dec_dim=8))
    stage = toyworld_stages.VaeStage(vae, 1.0, code_latents=True)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    torch.manual_seed(1)
    loss = stage(x)
    code = toyworld_stages.thumbnail_latents(x)  # (1, 48, 2, 2, 2)
    torch.manual_seed(1)  # the same decoder noise
    with torch.no_grad():
        recon = vae.model.decode(code + toyworld_stages.LATENT_NOISE * torch.randn_like(code), vae.scale)
        expected = toyworld_stages.reconstruction_loss(recon, x, 1.0) + torch.nn.functional.mse_loss(
            vae.model.encode(x, vae.scale), code)
    assert torch.isclose(loss, expected, rtol=1e-5)
    loss.backward()
    assert vae.model.conv1.weight.grad.abs().sum() > 0 and vae.model.conv2.weight.grad.abs().sum() > 0
    assert torch.equal(stage.latents(x), code)
    assert torch.equal(toyworld_stages.encode_clips(stage, np.zeros((2, 5, 32, 32, 3), np.uint8), progress=False),
                       toyworld_stages.thumbnail_latents(-torch.ones(2, 3, 5, 32, 32)))


def test_a_code_decoder_stage_decodes_the_code_whatever_the_encoder():
    torch.manual_seed(0)
    _, vae, _, _ = build_world_modules(SmallWorldConfig(vae_dim=8, vae_dec_dim=8))
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    losses = []
    for _ in range(2):
        torch.manual_seed(1)
        losses.append(DecoderStage(vae, code_latents=True)(x))
        with torch.no_grad():
            vae.model.conv1.weight.add_(1.0)  # another encoder
    assert torch.equal(losses[0], losses[1])
    torch.manual_seed(1)
    assert not torch.equal(DecoderStage(vae)(x), losses[0])  # the default decodes the encoder's latents
