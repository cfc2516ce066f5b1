"""models.loading: the one pipeline builder (tiny preset, small-world folder, model folder, random 5B)."""
import pytest
import torch

from models.artifacts import ArtifactConfig, save_action_artifacts
from models.loading import build_pipeline, build_random_5b
from models.small_world import SmallWorldConfig, save_small_world
from models.tiny import build_tiny_controller, build_tiny_pipeline


def test_exactly_one_source_is_named():
    with pytest.raises(ValueError, match="exactly one of preset, world or model_dir"):
        build_pipeline()
    with pytest.raises(ValueError, match="exactly one of preset, world or model_dir"):
        build_pipeline(preset="tiny", world="worlds/toy")
    with pytest.raises(ValueError, match="preset: unknown 'huge'"):
        build_pipeline(preset="huge")


def test_tiny_preset_with_and_without_its_controller():
    pipe = build_pipeline(preset="tiny", seed=3)
    expected = build_tiny_controller(3)
    assert torch.equal(pipe.action_controller.output_scale, expected.output_scale)
    assert torch.equal(pipe.dit.blocks[0].self_attn.q.weight, build_tiny_pipeline(3).dit.blocks[0].self_attn.q.weight)
    assert build_pipeline(preset="tiny", controller=False).action_controller is None
    loud = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0})
    assert float(loud.action_controller.output_scale[0].detach()) == 1.0


def test_world_folder_and_artifacts_replace_the_controller(tmp_path):
    save_small_world(str(tmp_path / "world"), build_tiny_pipeline(5), SmallWorldConfig())
    bare = build_pipeline(world=str(tmp_path / "world"))
    assert bare.action_controller is None  # the folder ships none
    controller = build_tiny_controller(7, initial_scale=0.5)
    save_action_artifacts(str(tmp_path / "run"), controller, ArtifactConfig(action_controller_config={}))
    pipe = build_pipeline(world=str(tmp_path / "world"), artifacts=str(tmp_path / "run"))
    assert torch.equal(pipe.action_controller.output_scale, controller.output_scale)


def test_model_folder_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="Wan2.2_VAE.pth"):
        build_pipeline(model_dir=str(tmp_path))


def test_random_5b_is_the_full_architecture_at_any_depth():
    pipe = build_random_5b("meta", torch.float32, layers=1, controller_overrides={"injection_type": "adaln_tmod"})
    assert (pipe.dit.dim, len(pipe.dit.blocks), pipe.dit.blocks[0].ffn[0].out_features) == (3072, 1, 14336)
    assert pipe.action_controller.injection_type == "adaln_tmod" and pipe.height_division_factor == 32
