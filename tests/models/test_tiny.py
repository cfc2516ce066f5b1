import json

import pytest
import torch

from models.action_format import constant_actions
from models.artifacts import ArtifactConfig, save_action_artifacts
from models.tiny import (
    WORLD_CONFIG_NAME,
    SmallWorldConfig,
    build_tiny_controller,
    build_tiny_pipeline,
    load_small_world,
    save_small_world,
)


def test_tiny_preset_is_the_ti2v_architecture_and_deterministic_per_seed():
    a, b, c = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=1)
    assert a.dit.seperated_timestep and a.dit.fuse_vae_embedding_in_latents
    assert a.vae.model.z_dim == 48 and a.vae.upsampling_factor == 16
    assert a.height_division_factor == a.width_division_factor == 32
    for name, tensor in a.dit.state_dict().items():
        assert torch.equal(tensor, b.dit.state_dict()[name])
    assert not torch.equal(a.dit.blocks[0].ffn[0].weight, c.dit.blocks[0].ffn[0].weight)
    ids, mask = a.tokenizer("A drone flies over zzz", return_mask=True)
    assert ids.shape == (1, 32) and int(mask.sum()) == 6  # 5 words + </s>
    assert ids[0, 4].item() == 2  # unknown word -> <unk>


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
