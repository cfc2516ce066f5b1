"""models.controller: the config, what each constructor argument builds, and loading state dicts (issue 23's
survivors: defaults, boundaries, parameter layouts and the exact messages a user reads)."""
import logging
import re

import pytest
import torch

from models.controller import (
    ACTION_CONTROLLER_CONFIGS,
    ActionControllerConfig,
    WanActionController,
    WanRMSNorm,
    resolve_controller_config,
)
from tests.models.test_controller import make

TINY = ACTION_CONTROLLER_CONFIGS["tiny"]
# Every argument away from its default, so a dropped or defaulted argument shows.
UNUSUAL = dict(action_dim=6, hidden_size=32, num_heads=4, num_latent_frames=7, num_layers=3, inject_layers=[1],
               qk_norm=False, dropout=0.25, initial_scale=0.5, injection_type="cross_attn_window", action_window=3,
               window_head_dim=4, lookahead=True, joint_previous=True, spatial_tmod=False)
# spatial_tmod needs adaln_tmod: the same with that type and the field on.
UNUSUAL_SPATIAL = {**UNUSUAL, "injection_type": "adaln_tmod", "spatial_tmod": True}


def test_the_defaults_are_the_5b_frame_controller():
    expected = dict(action_dim=8, hidden_size=3072, num_heads=24, num_latent_frames=20, num_layers=30,
                    inject_layers=None, qk_norm=True, dropout=0.0, initial_scale=0.01,
                    injection_type="cross_attn_frame", action_window=4, window_head_dim=32, lookahead=False,
                    joint_previous=False, spatial_tmod=False)
    assert ActionControllerConfig().to_dict() == expected
    with torch.device("meta"):
        controller = WanActionController()
    assert controller.config.to_dict() == expected
    assert controller.inject_layers == set(range(30))


def test_every_constructor_argument_reaches_the_config_and_the_parameters():
    spatial = WanActionController(**UNUSUAL_SPATIAL)
    assert spatial.config.to_dict() == UNUSUAL_SPATIAL
    assert spatial.action_to_spatial_tmod.weight.shape == (12 * 32, 32)
    controller = WanActionController(**UNUSUAL)
    assert controller.config.to_dict() == UNUSUAL
    assert WanActionController.from_config(UNUSUAL).config == controller.config  # from a dict
    assert WanActionController.from_config(controller.config).config == controller.config  # from a config
    assert [controller.should_inject(i) for i in range(3)] == [False, True, False]
    assert controller.dropout.p == 0.25
    shapes = {key: tuple(value.shape) for key, value in controller.state_dict().items()}
    assert shapes == {
        "action_embed.0.weight": (32, 12), "action_embed.0.bias": (32,), "action_embed.2.weight": (32, 32),
        "action_embed.2.bias": (32,), "temporal_pos_embed": (1, 7, 32),
        "q_proj.weight": (16, 32), "k_proj.weight": (16, 32),  # heads x window_head_dim, no qk-norm weights
        "v_proj.weight": (32, 32), "o_proj.weight": (32, 32), "rel_pos_bias": (4, 3),
        "output_scale": (3,), "ahead_to_tmod.weight": (192, 32), "ahead_scale": (3,)}
    assert controller.output_scale.tolist() == [0.5] * 3
    assert controller.ahead_scale.tolist() == [1.0] * 3
    assert controller.ahead_to_tmod.weight.abs().max() == 0  # zero init: a world gaining lookahead is unchanged
    assert controller.rel_pos_bias.abs().max() == 0


@pytest.mark.parametrize("injection_type,norms", [("cross_attn_frame", False), ("cross_attn_window", True),
                                                  ("adaln_tmod", False), ("add_residual", False)])
def test_only_the_action_embedding_has_biases_and_qk_norm_builds_norms(injection_type, norms):
    controller = WanActionController(**{**TINY, "injection_type": injection_type, "lookahead": True})
    state = controller.state_dict()
    assert sorted(k for k in state if k.endswith(".bias")) == ["action_embed.0.bias", "action_embed.2.bias"]
    assert ("q_norm.weight" in state and "k_norm.weight" in state) is norms
    if norms:
        assert isinstance(controller.q_norm, WanRMSNorm) and state["q_norm.weight"].shape == (16,)


def test_initial_values():
    torch.manual_seed(0)
    controller = WanActionController(**{**TINY, "num_latent_frames": 20, "initial_scale": 0.03})
    assert 0.015 < controller.temporal_pos_embed.std().item() < 0.025  # randn * 0.02
    torch.testing.assert_close(controller.output_scale.detach(), torch.full((2,), 0.03))


def test_sparse_layers_inject_only_there():
    controller = WanActionController(**{**TINY, "num_layers": 4, "inject_layers": [3, 0, 3]})
    assert controller.config.inject_layers == [0, 3]
    assert [controller.should_inject(i) for i in range(4)] == [True, False, False, True]


@pytest.mark.parametrize("name", ["action_dim", "num_heads", "num_latent_frames", "num_layers", "action_window",
                                  "window_head_dim"])
def test_one_is_the_smallest_size_and_bools_are_not_sizes(name):
    assert getattr(ActionControllerConfig(**{**TINY, name: 1}), name) == 1
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=f"^{name}: expected a positive int, got {bad!r}$"):
            ActionControllerConfig(**{**TINY, name: bad})


def test_inject_layers_are_checked_against_the_layer_count():
    assert ActionControllerConfig(**{**TINY, "inject_layers": [0, 1]}).inject_layers == [0, 1]  # both ends
    for bad in ([2], [-1]):
        with pytest.raises(ValueError, match=re.escape(f"inject_layers: {bad} outside 0..1")):
            ActionControllerConfig(**{**TINY, "inject_layers": bad})


def test_config_dict_round_trip_and_its_errors():
    config = ActionControllerConfig(**UNUSUAL)
    assert config.to_dict() == UNUSUAL
    assert ActionControllerConfig.from_dict(config.to_dict()) == config
    spatial = ActionControllerConfig(**UNUSUAL_SPATIAL)
    assert ActionControllerConfig.from_dict(spatial.to_dict()) == spatial
    with pytest.raises(ValueError, match=r"^action controller config: unknown field\(s\) \['hidden'\]"):
        ActionControllerConfig.from_dict({"hidden": 3})
    resolved = resolve_controller_config(dict(TINY), injection_type="adaln_tmod", dropout=None)
    assert resolved.to_dict() == {**TINY, "injection_type": "adaln_tmod"}


def test_rms_norm_numbers():
    norm = WanRMSNorm(4)
    assert norm.eps == 1e-5
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.tensor([[0.001, -0.002, 0.003, 0.004], [1.0, 2.0, -3.0, 4.0], [0.0, 0.0, 0.0, 5.0]])  # (3, 4)
    expected = x / torch.sqrt((x ** 2).mean(dim=-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_as_many_steps_as_latent_frames_is_fine():
    controller = WanActionController(**{**TINY, "num_latent_frames": 3})
    assert controller.build_action_emb(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8)).shape == (1, 3, 64)


# ---- loading ------------------------------------------------------------------------------------------------
def test_loading_copies_by_default_and_assigns_when_asked():
    source, target = make("add_residual"), make("add_residual", initial_scale=0.0)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    target.load_state_dict(state)
    assert target.output_scale.data_ptr() != state["output_scale"].data_ptr()
    torch.testing.assert_close(target.output_scale.detach(), state["output_scale"])
    target.load_state_dict(state, assign=True)
    assert target.output_scale.data_ptr() == state["output_scale"].data_ptr()


def test_non_strict_loading_passes_through_to_torch():
    target = make("add_residual", initial_scale=0.0)
    partial = {"output_scale": torch.full((2,), 0.7)}
    result = target.load_state_dict(partial, strict=False)
    assert "action_to_residual.weight" in result.missing_keys
    assert target.output_scale.tolist() == pytest.approx([0.7, 0.7])


def test_problems_are_listed_together_in_one_message():
    controller = make("add_residual")
    state = {k: v for k, v in controller.state_dict().items() if k != "action_to_residual.weight"}
    state["bogus.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        controller.load_state_dict(state)
    assert str(error.value) == ("action controller (add_residual, hidden_size 64) cannot load this state dict: "
                                "missing keys ['action_to_residual.weight']; unexpected keys ['bogus.weight']")


def test_the_window_type_ignores_no_seed_branch_and_explains_a_seed_checkpoint():
    controller = make("cross_attn_window")
    own = dict(controller.state_dict())
    with pytest.raises(ValueError, match=re.escape("unexpected keys ['action_to_tmod.weight']")):
        controller.load_state_dict({**own, "action_to_tmod.weight": torch.zeros(384, 64)})
    with pytest.raises(ValueError) as error:
        controller.load_state_dict({k: v for k, v in own.items() if k != "rel_pos_bias"})
    assert str(error.value).endswith(
        "missing keys ['rel_pos_bias'] (a seed checkpoint cannot load into cross_attn_window: it lacks the window's "
        "rel_pos_bias and narrow q/k projections; train this type from scratch)")


def test_the_ignored_seed_branches_are_named_in_one_log_line(caplog):
    controller = make("adaln_tmod")
    state = dict(controller.state_dict())
    state.update({"q_proj.weight": torch.zeros(64, 64), "k_norm.weight": torch.zeros(32),
                  "action_to_residual.weight": torch.zeros(64, 64)})
    with caplog.at_level(logging.INFO, logger="models.controller"):
        controller.load_state_dict(state)
    assert [r.getMessage() for r in caplog.records] == [
        "action controller (adaln_tmod): ignoring 3 keys of unused seed branches "
        "(action_to_residual, k_norm, q_proj)"]


def test_own_spatial_tmod_starts_a_plain_controller_where_it_was():
    plain = make("adaln_tmod")
    spatial = make("adaln_tmod", spatial_tmod=True)
    state = spatial.with_own_additions(plain.state_dict())
    assert set(state) == set(plain.state_dict()) | {"action_to_spatial_tmod.weight"}
    spatial.load_state_dict(state)
    assert spatial.action_to_spatial_tmod.weight.abs().max() == 0
    torch.testing.assert_close(spatial.action_to_tmod.weight, plain.action_to_tmod.weight)


def test_own_lookahead_fills_only_what_the_state_dict_lacks():
    plain = make("cross_attn_frame")
    ahead = make("cross_attn_frame", lookahead=True)
    with torch.no_grad():
        ahead.ahead_scale.fill_(3.0)
    state = ahead.with_own_additions(plain.state_dict())
    assert set(state) == set(plain.state_dict()) | {"ahead_to_tmod.weight", "ahead_scale"}
    assert state["ahead_scale"].tolist() == [3.0, 3.0]  # the controller's own
    given = {**plain.state_dict(), "ahead_scale": torch.tensor([5.0, 6.0])}
    assert ahead.with_own_additions(given)["ahead_scale"].tolist() == [5.0, 6.0]  # the state dict's wins
    ahead.load_state_dict(state)
    torch.testing.assert_close(ahead.v_proj.weight, plain.v_proj.weight)
