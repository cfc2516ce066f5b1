import json

import pytest
import torch

from models.action_format import MAGNITUDE_SCALE, constant_actions
from models.artifacts import (
    CONFIG_NAME,
    CONTROLLER_NAME,
    LORA_NAME,
    ArtifactConfig,
    load_controller,
    save_action_artifacts,
)
from models.lora import fuse_lora
from models.tiny import build_tiny_controller, build_tiny_pipeline

ACTIONS = constant_actions(2, {"Right": 0.02, "Pitch Down": 0.5})


def tiny_lora_state(dit, rank=4, seed=0):
    """A random LoRA over the DiT's self-attention q/v, in peft's key layout."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for i, block in enumerate(dit.blocks):
        for name in ("q", "v"):
            weight = getattr(block.self_attn, name).weight
            state[f"blocks.{i}.self_attn.{name}.lora_A.default.weight"] = torch.randn(rank, weight.shape[1],
                                                                                       generator=generator) * 0.1
            state[f"blocks.{i}.self_attn.{name}.lora_B.default.weight"] = torch.randn(weight.shape[0], rank,
                                                                                       generator=generator) * 0.1
    return state


@pytest.mark.parametrize("injection_type", ["cross_attn_frame", "cross_attn_window"])
def test_round_trip_gives_bit_identical_video(tmp_path, pipe_with, gen_kwargs, injection_type):
    controller = build_tiny_controller(3, injection_type=injection_type, initial_scale=0.7)
    scale = [50, 50, 50, 50, 2, 2, 2, 2]
    pipe = pipe_with(controller, magnitude_scale=scale)
    before = pipe(actions=ACTIONS, **gen_kwargs)
    save_action_artifacts(str(tmp_path), controller, ArtifactConfig(
        action_controller_config={}, action_magnitude_scale=scale, base_model_id="tiny",
        action_stats={"Forward": {"p90": 0.012}}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_NAME, CONTROLLER_NAME])
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["action_controller_config"]["injection_type"] == injection_type
    assert saved["action_magnitude_scale"] == scale

    pipe.set_action_controller(None)
    pipe.action_magnitude_scale = tuple(MAGNITUDE_SCALE)
    pipe.load_action_artifacts(str(tmp_path))
    assert pipe.action_magnitude_scale == tuple(float(s) for s in scale)
    assert pipe.action_stats == {"Forward": {"p90": 0.012}}
    loaded = pipe.action_controller.state_dict()
    assert loaded.keys() == controller.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in controller.state_dict().items())
    after = pipe(actions=ACTIONS, **gen_kwargs)
    assert torch.equal(after, before)
    # ...and the comparison can fail: the actions, the weights and the scale each change the video
    assert (after - pipe(**gen_kwargs)).abs().max() > 1e-3  # no actions
    pipe.set_action_controller(build_tiny_controller(4, injection_type=injection_type, initial_scale=0.7),
                               magnitude_scale=scale)
    assert (after - pipe(actions=ACTIONS, **gen_kwargs)).abs().max() > 1e-3  # other weights
    pipe.set_action_controller(controller, magnitude_scale=MAGNITUDE_SCALE)
    assert (after - pipe(actions=ACTIONS, **gen_kwargs)).abs().max() > 1e-3  # the default scale


def test_lora_is_fused_when_configured(tmp_path, gen_kwargs):
    pipe = build_tiny_pipeline(seed=0)
    lora = tiny_lora_state(pipe.dit)
    controller = build_tiny_controller(1, initial_scale=0.5)
    config = ArtifactConfig(action_controller_config={}, lora={
        "lora_base_model": "dit", "lora_target_modules": "q,v", "lora_rank": 4})
    save_action_artifacts(str(tmp_path), controller, config, lora_state=lora)
    assert (tmp_path / LORA_NAME).is_file()

    expected = build_tiny_pipeline(seed=0)
    assert fuse_lora(expected.dit, lora) == 4
    expected.set_action_controller(controller)
    pipe.load_action_artifacts(str(tmp_path))
    assert torch.equal(pipe(actions=ACTIONS, **gen_kwargs), expected(actions=ACTIONS, **gen_kwargs))
    fresh = build_tiny_pipeline(0)
    assert not torch.equal(pipe.dit.blocks[0].self_attn.q.weight, fresh.dit.blocks[0].self_attn.q.weight)


def test_fused_lora_equals_peft_forward():
    from diffsynth.diffusion.training_module import DiffusionTrainingModule
    base = build_tiny_pipeline(seed=0).dit
    peft_dit = DiffusionTrainingModule().add_lora_to_model(build_tiny_pipeline(seed=0).dit, ["q", "v"], lora_rank=4)
    lora = tiny_lora_state(base)
    missing, unexpected = peft_dit.load_state_dict(lora, strict=False)
    assert not unexpected
    fuse_lora(base, lora)
    x = torch.randn(1, 10, 64)
    for i in range(2):
        assert torch.allclose(base.blocks[i].self_attn.q(x), peft_dit.blocks[i].self_attn.q(x), atol=1e-5)


def test_mismatches_are_clear_errors(tmp_path):
    controller = build_tiny_controller(0)
    save_action_artifacts(str(tmp_path), controller, ArtifactConfig(action_controller_config={}))
    config_path = tmp_path / CONFIG_NAME
    data = json.loads(config_path.read_text())

    data["action_controller_config"]["injection_type"] = "add_residual"  # config vs weights
    config_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing keys.*action_to_residual"):
        load_controller(str(tmp_path))

    data["action_controller_config"]["injection_type"] = "cross_attn_frame"
    data["action_controller_config"]["hidden_size"] = 96
    config_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hidden_size 96"):
        load_controller(str(tmp_path))

    data["action_controller_config"]["hidden_size"] = 64
    data["action_controller_config"]["injection_type"] = "gated"
    config_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="injection_type: unknown 'gated'"):
        load_controller(str(tmp_path))

    data["action_controller_config"]["injection_type"] = "cross_attn_frame"
    data["action_magnitude_scale"] = [1, 2, 3]
    config_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="action_magnitude_scale"):
        load_controller(str(tmp_path))

    data["action_magnitude_scale"] = [100] * 4 + [1] * 4
    data["lora"] = {"lora_base_model": "dit", "lora_rank": 4, "lora_target_modules": "q"}
    config_path.write_text(json.dumps(data))
    pipe = build_tiny_pipeline(seed=0)
    with pytest.raises(FileNotFoundError, match="lora.safetensors"):
        pipe.load_action_artifacts(str(tmp_path))

    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_controller(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        load_controller(str(tmp_path / "missing"))


def test_bad_lora_files_are_rejected(tmp_path):
    dit = build_tiny_pipeline(seed=0).dit
    lora = tiny_lora_state(dit)
    with pytest.raises(ValueError, match="only one of lora_A/lora_B"):
        fuse_lora(dit, {k: v for k, v in lora.items() if "blocks.0.self_attn.q.lora_B" not in k})
    with pytest.raises(ValueError, match="not found"):
        fuse_lora(dit, {k.replace("self_attn", "attn"): v for k, v in lora.items()})
    with pytest.raises(ValueError, match="unexpected key"):
        fuse_lora(dit, {"blocks.0.self_attn.q.weight": torch.zeros(1)})
    wrong = dict(lora)
    wrong["blocks.0.self_attn.q.lora_A.default.weight"] = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="do not fit"):
        fuse_lora(dit, wrong)
