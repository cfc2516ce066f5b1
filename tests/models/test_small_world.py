"""models.small_world: the config, the folder round trip, and the committed toy world."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from models.action_format import constant_actions
from models.artifacts import ArtifactConfig, save_action_artifacts
from models.frames.small_decoder import SmallStreamDecoder, decode_video
from models.small_world import (
    WORLD_CONFIG_NAME,
    SmallWorldConfig,
    load_small_world,
    save_small_world,
)
from models.tiny import build_tiny_controller, build_tiny_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TOY = os.path.join(REPO, "worlds", "toy")


def test_committed_toy_world_loads_and_generates(forward_clip):
    hints = json.load(open(os.path.join(TOY, "serve.json")))
    pipe = load_small_world(TOY)
    assert pipe.action_controller is not None
    h, w, f = hints["height"], hints["width"], hints["chunk_frames"]
    video = forward_clip(pipe, h, w, f, steps=2)
    assert video.shape == (1, 3, f, h, w) and torch.isfinite(video).all()
    assert video.abs().max() <= 1.0 + 1e-5


def test_committed_toy_world_has_a_small_decoder_that_draws_what_its_vae_draws():
    """worlds/toy/small_decoder (distilled from this world's VAE decoder; docs/toyworld.md "The small decoder")
    loads with the world and decodes the demo's first frame, held for 9 frames, close to the world's VAE decoder,
    streamed latent frame by latent frame exactly as at once."""
    pipe = load_small_world(TOY)
    assert pipe.small_decoder is not None and pipe.decoder == "wan"  # attached; serve.json's "decoder" chooses
    frame = np.asarray(Image.open(os.path.join(REPO, "web", "samples", "synthetic-3.png")).convert("RGB").resize(
        (128, 128)))
    video = torch.from_numpy(frame).float().div(127.5).sub(1).permute(2, 0, 1)[:, None].repeat(1, 9, 1, 1)
    with torch.no_grad():
        z = pipe.vae.encode([video], device="cpu")  # (1, 48, 3, 8, 8)
        wan = pipe.vae.decode(z, device="cpu").clamp(-1, 1)  # (1, 3, 9, 128, 128)
        small = decode_video(pipe.small_decoder, z)
        stream = SmallStreamDecoder(pipe.small_decoder)
        streamed = torch.cat([stream.push(z[:, :, i:i + 1]) for i in range(z.shape[2])], 2)
    assert small.shape == wan.shape == (1, 3, 9, 128, 128)
    assert torch.allclose(streamed, small, atol=1e-5)
    psnr = 10 * torch.log10(4 / (small - wan).pow(2).mean())  # [-1, 1] frames: peak-to-peak 2
    assert psnr > 28  # measured: 35.1 dB (the first decoder distilled for this world, without generated flights: 25.7)


def test_config_rejects_rope_incompatible_heads():
    with pytest.raises(ValueError, match="head_dim"):
        SmallWorldConfig(dim=64, num_heads=4)  # head_dim 16


def test_small_world_folder_round_trip(tmp_path, gen_kwargs):
    config = SmallWorldConfig()
    pipe = build_tiny_pipeline(seed=5)
    controller = build_tiny_controller(5, initial_scale=0.5)
    pipe.set_action_controller(controller)
    actions = constant_actions(2, {"Forward": 0.01})
    expected = pipe(actions=actions, **gen_kwargs)
    save_small_world(str(tmp_path), pipe, config)
    save_action_artifacts(str(tmp_path), controller, ArtifactConfig(action_controller_config={}, base_model_id="tiny"))
    loaded = load_small_world(str(tmp_path))
    assert torch.equal(loaded(actions=actions, **gen_kwargs), expected)

    data = json.loads((tmp_path / WORLD_CONFIG_NAME).read_text())
    data["config"]["dim"] = 96
    data["config"]["num_heads"] = 2
    (tmp_path / WORLD_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="dit.safetensors does not match"):
        load_small_world(str(tmp_path))
    (tmp_path / "vae.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="vae.safetensors"):
        load_small_world(str(tmp_path))
