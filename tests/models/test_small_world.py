"""models.small_world: the config, the folder round trip, and the committed toy world."""
import json
import os

import pytest
import torch

from models.action_format import constant_actions
from models.artifacts import ArtifactConfig, save_action_artifacts
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
