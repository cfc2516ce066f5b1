import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.controller import (
    ACTION_CONTROLLER_CONFIGS,
    INJECTION_TYPES,
    ActionControllerConfig,
    WanActionController,
    WanRMSNorm,
    resolve_controller_config,
    token_coordinates,
)

B, T, H_GRID, W_GRID, C, HEADS = 2, 3, 2, 3, 64, 2
FRAMES, N = T + 1, H_GRID * W_GRID


def make(injection_type, **kw):
    torch.manual_seed(0)
    kw = {**ACTION_CONTROLLER_CONFIGS["tiny"], "injection_type": injection_type, "initial_scale": 0.5, **kw}
    return WanActionController(**kw)


def inputs():
    torch.manual_seed(1)
    x = torch.randn(B, FRAMES * N, C)  # (B, L, C)
    binary = (torch.rand(B, T, 8) > 0.5).float()
    magnitude = torch.rand(B, T, 8) * binary
    return x, binary, magnitude


def seed_reference_frame_attention(ctrl, x, emb, block_idx):
    """The seed's cross_attn_frame written out: per frame, per head, qk-norm, softmax over its single key."""
    torch.manual_seed(2)
    q_proj, k_proj = nn.Linear(C, C, bias=False), nn.Linear(C, C, bias=False)
    q_norm, k_norm = WanRMSNorm(C // HEADS), WanRMSNorm(C // HEADS)
    tokens = x.view(B, FRAMES, N, C)[:, 1:]  # (B, T, N, C)
    q = q_norm(q_proj(tokens).unflatten(-1, (HEADS, -1))).transpose(2, 3)  # (B, T, H, N, d)
    k = k_norm(k_proj(emb).unflatten(-1, (HEADS, -1)))[:, :, :, None]  # (B, T, H, 1, d)
    v = ctrl.v_proj(emb).unflatten(-1, (HEADS, -1))[:, :, :, None]  # (B, T, H, 1, d)
    out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).flatten(-2)  # (B, T, N, C)
    out = ctrl.o_proj(out) * ctrl.output_scale[block_idx]
    result = x.view(B, FRAMES, N, C).clone()
    result[:, 1:] += out
    return result.view(B, FRAMES * N, C)


def reference_window_attention(ctrl, x, emb, block_idx):
    """cross_attn_window written the slow, obvious way: a loop over frames, per-head softmax over the window."""
    W, D = ctrl.config.action_window, ctrl.config.window_head_dim
    result = x.view(B, FRAMES, N, C).clone()
    for j in range(T):  # action j drives latent frame j + 1
        window = list(range(max(0, j - W + 1), j + 1))
        tokens = x.view(B, FRAMES, N, C)[:, j + 1]  # (B, N, C)
        q = ctrl.q_norm(ctrl.q_proj(tokens).unflatten(-1, (HEADS, D)))  # (B, N, H, D)
        k = ctrl.k_norm(ctrl.k_proj(emb[:, window]).unflatten(-1, (HEADS, D)))  # (B, S, H, D)
        v = ctrl.v_proj(emb[:, window]).unflatten(-1, (HEADS, C // HEADS))  # (B, S, H, C/H)
        bias = torch.stack([ctrl.rel_pos_bias[:, j - s] for s in window], dim=-1)  # (H, S)
        scores = torch.einsum("bnhd,bshd->bhns", q, k) / D ** 0.5 + bias[None, :, None]
        out = torch.einsum("bhns,bshe->bnhe", scores.softmax(-1), v).flatten(-2)  # (B, N, C)
        result[:, j + 1] += ctrl.o_proj(out) * ctrl.output_scale[block_idx]
    return result.view(B, FRAMES * N, C)


def test_frame_attention_fast_path_equals_the_seed_attention():
    ctrl = make("cross_attn_frame").eval()
    x, binary, magnitude = inputs()
    emb = ctrl.build_action_emb(binary, magnitude)  # (B, T, C)
    fast = ctrl.apply_action(x, emb, FRAMES, H_GRID, W_GRID, block_idx=1)
    reference = seed_reference_frame_attention(ctrl, x, emb, block_idx=1)
    assert torch.allclose(fast, reference, atol=1e-5)
    assert not torch.allclose(fast, x, atol=1e-3)  # it does change the tokens


def test_window_attention_matches_the_reference_and_attention_is_real():
    ctrl = make("cross_attn_window", action_window=2).eval()
    with torch.no_grad():
        ctrl.rel_pos_bias.normal_()  # non-zero bias so the test covers it
    x, binary, magnitude = inputs()
    emb = ctrl.build_action_emb(binary, magnitude)
    fast = ctrl.apply_action(x, emb, FRAMES, H_GRID, W_GRID, block_idx=0)
    assert torch.allclose(fast, reference_window_attention(ctrl, x, emb, 0), atol=1e-5)


def test_window_attention_q_k_and_bias_receive_gradient():
    ctrl = make("cross_attn_window")
    x, binary, magnitude = inputs()
    out = ctrl(x, binary, magnitude, FRAMES, H_GRID, W_GRID, block_idx=0)
    (out ** 2).sum().backward()
    for name in ("q_proj.weight", "k_proj.weight", "rel_pos_bias", "v_proj.weight", "o_proj.weight",
                 "action_embed.0.weight", "output_scale"):
        grad = dict(ctrl.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("injection_type", ["cross_attn_frame", "cross_attn_window", "add_residual"])
def test_frame_zero_is_never_changed(injection_type):
    ctrl = make(injection_type)
    x, binary, magnitude = inputs()
    out = ctrl(x, binary, magnitude, FRAMES, H_GRID, W_GRID, block_idx=0)
    assert torch.equal(out[:, :N], x[:, :N])
    assert (out[:, N:] - x[:, N:]).abs().max() > 1e-4


def test_adaln_delta_is_per_frame_and_zero_for_frame_zero():
    ctrl = make("adaln_tmod")
    _, binary, magnitude = inputs()
    emb = ctrl.build_action_emb(binary, magnitude)
    t_mod = torch.randn(1, FRAMES * N, 6, C)  # per token (TI2V)
    out = ctrl.add_to_tmod(t_mod, emb, FRAMES, H_GRID, W_GRID, block_idx=0)  # (B, L, 6, C)
    assert out.shape == (B, FRAMES * N, 6, C)
    assert torch.equal(out[:, :N], t_mod[:, :N].expand(B, -1, -1, -1))
    delta = (out - t_mod).view(B, FRAMES, N, 6, C)
    # the same for every token of a frame
    assert torch.allclose(delta[:, 1:], delta[:, 1:, :1].expand_as(delta[:, 1:]), atol=1e-6)
    expected = ctrl.action_tmod(emb, H_GRID, W_GRID)[:, :, 0] * ctrl.output_scale[0]  # (B, T, 6, C)
    assert torch.allclose(delta[:, 1:, 0], expected, atol=1e-6)
    global_t_mod = torch.randn(1, 6, C)  # text-to-video: one t_mod for all tokens
    out = ctrl.add_to_tmod(global_t_mod, emb, FRAMES, H_GRID, W_GRID, block_idx=0)
    assert out.shape == (B, FRAMES * N, 6, C)
    assert torch.allclose(out[:, N], global_t_mod[0] + expected[:, 0], atol=1e-6)


@pytest.mark.parametrize("injection_type,owned", [
    ("cross_attn_frame", {"v_proj", "o_proj"}),
    ("cross_attn_window", {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "rel_pos_bias"}),
    ("adaln_tmod", {"action_to_tmod"}),
    ("add_residual", {"action_to_residual"}),
])
def test_only_the_used_branch_is_built(injection_type, owned):
    names = {key.split(".")[0] for key in make(injection_type).state_dict()}
    assert names == {"action_embed", "temporal_pos_embed", "output_scale"} | owned


def test_full_size_frame_controller_is_much_smaller_than_the_seed():
    with torch.device("meta"):
        ctrl = WanActionController(**ACTION_CONTROLLER_CONFIGS["wan_ti2v_5b"])
    count = sum(p.numel() for p in ctrl.parameters())
    seed_count = count + 2 * 3072 ** 2 + 6 * 3072 ** 2 + 3072 ** 2 + 2 * 128  # q, k, tmod, residual, qk-norms
    assert count < 0.3 * seed_count
    assert 113e6 < seed_count < 114e6  # the issue's ~113M for the seed layout


def seed_state_dict(ctrl):
    """A state dict in the seed's all-branches layout, built around the controller's own tensors."""
    C_ = ctrl.hidden_size
    state = dict(ctrl.state_dict())
    extra = {"q_proj.weight": (C_, C_), "k_proj.weight": (C_, C_), "v_proj.weight": (C_, C_),
             "o_proj.weight": (C_, C_), "action_to_tmod.weight": (6 * C_, C_),
             "action_to_residual.weight": (C_, C_), "q_norm.weight": (C_ // ctrl.num_heads,),
             "k_norm.weight": (C_ // ctrl.num_heads,)}
    for key, shape in extra.items():
        state.setdefault(key, torch.randn(shape))
    return state


@pytest.mark.parametrize("injection_type", ["cross_attn_frame", "adaln_tmod", "add_residual"])
def test_seed_layout_loads_and_ignores_unused_branches(injection_type, caplog):
    source = make(injection_type)
    target = make(injection_type, initial_scale=0.0)
    with caplog.at_level(logging.INFO, logger="models.controller"):
        target.load_state_dict(seed_state_dict(source))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    assert len([r for r in caplog.records if "ignoring" in r.message]) == 1


def test_seed_layout_cannot_load_into_the_window_type():
    with pytest.raises(ValueError, match="seed checkpoint cannot load into cross_attn_window"):
        make("cross_attn_window").load_state_dict(seed_state_dict(make("cross_attn_frame")))


def test_load_errors_name_the_problem():
    ctrl = make("add_residual")
    state = dict(ctrl.state_dict())
    with pytest.raises(ValueError, match="missing keys.*action_to_residual"):
        ctrl.load_state_dict({k: v for k, v in state.items() if not k.startswith("action_to_residual")})
    with pytest.raises(ValueError, match="unexpected keys.*bogus"):
        ctrl.load_state_dict({**state, "bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        ctrl.load_state_dict({**state, "temporal_pos_embed": torch.zeros(1, 5, 64)})
    wide = WanActionController(**{**ACTION_CONTROLLER_CONFIGS["tiny"], "hidden_size": 96, "num_heads": 2})
    with pytest.raises(ValueError, match="hidden_size 96"):
        wide.load_state_dict(state)


def test_dropout_applies_to_the_change_in_training_only():
    ctrl = make("add_residual", dropout=0.5)
    x, binary, magnitude = inputs()
    ctrl.eval()
    a = ctrl(x, binary, magnitude, FRAMES, H_GRID, W_GRID, 0)
    b = ctrl(x, binary, magnitude, FRAMES, H_GRID, W_GRID, 0)
    assert torch.equal(a, b)
    ctrl.train()
    torch.manual_seed(3)
    c = ctrl(x, binary, magnitude, FRAMES, H_GRID, W_GRID, 0)
    dropped = ((c - x)[:, N:] == 0).float().mean().item()
    assert 0.3 < dropped < 0.7


def test_too_many_steps_is_an_error():
    ctrl = make("cross_attn_frame", num_latent_frames=2)
    with pytest.raises(ValueError, match="exceed the controller's num_latent_frames"):
        ctrl.build_action_emb(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))


@pytest.mark.parametrize("overrides,match", [
    ({"injection_type": "film"}, "injection_type"),
    ({"inject_layers": [0, 5]}, "inject_layers"),
    ({"hidden_size": 65}, "divisible"),
    ({"num_layers": 0}, "num_layers"),
    ({"dropout": 1.0}, "dropout"),
    ({"lookahead": "yes"}, "lookahead: expected true or false"),
    ({"joint_previous": 1}, "joint_previous: expected true or false"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        ActionControllerConfig(**{**ACTION_CONTROLLER_CONFIGS["tiny"], **overrides})


def test_presets_and_resolution():
    assert set(ACTION_CONTROLLER_CONFIGS) == {"wan_ti2v_5b", "wan_ti2v_5b_sparse", "wan_ti2v_5b_adaln",
                                              "wan_ti2v_5b_add", "wan_ti2v_5b_window", "tiny"}
    assert ACTION_CONTROLLER_CONFIGS["wan_ti2v_5b_sparse"]["inject_layers"] == list(range(0, 30, 3))
    assert {c["injection_type"] for c in ACTION_CONTROLLER_CONFIGS.values()} == set(INJECTION_TYPES)
    cfg = resolve_controller_config("wan_ti2v_5b", injection_type="add_residual", initial_scale=None)
    assert cfg.injection_type == "add_residual" and cfg.initial_scale == 0.01
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_controller_config("wan_5b")
    with pytest.raises(ValueError, match="unknown field"):
        ActionControllerConfig.from_dict({"hidden": 3})


# ---- issue 23: the input layout trained artifacts depend on, pinned without a trained world --------------------
def test_action_tokens_read_flags_then_magnitudes_in_action_order_one_token_per_step():
    """build_action_emb's features are [8 flags, 8 scaled magnitudes] in ACTION_NAMES order, token t from action
    step t, plus the temporal embedding of step t. With an identity embedding the tokens show the layout."""
    controller = make("cross_attn_frame")
    first, second = controller.action_embed[0], controller.action_embed[2]  # Linear(16, C), SiLU, Linear(C, C)
    with torch.no_grad():
        first.weight.zero_()
        first.weight[:16, :16] = torch.eye(16)
        first.bias.zero_()
        second.weight.copy_(torch.eye(second.weight.shape[0]))
        second.bias.zero_()
        controller.temporal_pos_embed.zero_()
        controller.temporal_pos_embed[0, :, 20] = torch.arange(controller.temporal_pos_embed.shape[1]) * 10.0
    binary = torch.zeros(1, 3, 8)
    magnitude = torch.zeros(1, 3, 8)
    binary[0, 0, 0], magnitude[0, 0, 0] = 1, 1.0  # step 0: Forward 1.0 (scaled)
    binary[0, 2, 5], magnitude[0, 2, 5] = 1, 2.0  # step 2: Yaw Right 2.0
    tokens = controller.build_action_emb(binary, magnitude)  # (1, 3, C)
    expected = F.silu(torch.cat([binary, magnitude], dim=-1))  # (1, 3, 16)
    torch.testing.assert_close(tokens[..., :16], expected)
    assert tokens[0, :, 20].tolist() == [0.0, 10.0, 20.0]  # the temporal embedding of each step
    assert tokens[0, 1, :16].abs().max() == 0  # a hover step carries nothing


# ---- the block-causal path (models.causal): frame_change and ahead_change -----------------------------------
@pytest.mark.parametrize("injection_type", INJECTION_TYPES)
def test_frame_change_is_the_chunked_change_of_the_same_frames(injection_type):
    """A stream's block (frames 2..3, no first image, 3 action tokens of which the first is history) gets exactly
    the change the chunked path gives those frames; with the first image included, frame 0 gets none."""
    ctrl = make(injection_type).eval()
    with torch.no_grad():
        if injection_type == "cross_attn_window":
            ctrl.rel_pos_bias.normal_()
    x, binary, magnitude = inputs()
    emb = ctrl.build_action_emb(binary, magnitude)  # (B, T, C)
    if injection_type == "adaln_tmod":
        t_mod = torch.zeros(1, FRAMES * N, 6, C)
        full = ctrl.add_to_tmod(t_mod, emb, FRAMES, H_GRID, W_GRID, block_idx=1).view(B, FRAMES, N, 6, C)
        full = full[:, :, :1]  # (B, F, 1, 6, C): the same for every token of a frame
    else:
        full = (ctrl.apply_action(x, emb, FRAMES, H_GRID, W_GRID, block_idx=1) - x).view(B, FRAMES, N, C)
        if injection_type != "cross_attn_window":
            full = full[:, :, :1]  # (B, F, 1, C)
    block = x.view(B, FRAMES, N, C)[:, 2:].reshape(B, 2 * N, C)  # frames 2..3
    change = ctrl.frame_change(block, emb, 2, (H_GRID, W_GRID), block_idx=1, first_frame_is_image=False)
    assert change.shape == full[:, 2:].shape
    torch.testing.assert_close(change, full[:, 2:], atol=1e-6, rtol=1e-5)
    with_image = ctrl.frame_change(x, emb, FRAMES, (H_GRID, W_GRID), block_idx=1, first_frame_is_image=True)
    torch.testing.assert_close(with_image, full, atol=1e-6, rtol=1e-5)
    assert with_image[:, 0].abs().max() == 0 and with_image[:, 1:].abs().max() > 1e-4


def test_window_type_gives_fewer_actions_to_the_last_frames():
    """T action tokens for F > T + 1 frames drive the last T frames (where _frame_expand puts the change)."""
    ctrl = make("cross_attn_window").eval()
    x, binary, magnitude = inputs()
    emb = ctrl.build_action_emb(binary[:, 1:], magnitude[:, 1:])  # (B, 2, C): frames 2 and 3
    out = ctrl.apply_action(x, emb, FRAMES, H_GRID, W_GRID, block_idx=0).view(B, FRAMES, N, C)
    block = x.view(B, FRAMES, N, C)[:, 2:].reshape(B, 2 * N, C)  # frames 2..3
    expected = ctrl.frame_change(block, emb, 2, (H_GRID, W_GRID), 0, False)
    assert torch.equal(out[:, :2], x.view(B, FRAMES, N, C)[:, :2])
    torch.testing.assert_close(out[:, 2:] - x.view(B, FRAMES, N, C)[:, 2:], expected, atol=1e-6, rtol=1e-5)


def test_ahead_change_numbers_and_absent_frames():
    ctrl = make("cross_attn_frame", lookahead=True)
    torch.manual_seed(4)
    with torch.no_grad():
        ctrl.ahead_to_tmod.weight.normal_()
        ctrl.ahead_scale.copy_(torch.tensor([2.0, 3.0]))
    ahead = torch.randn(B, 3, C)  # (B, f, C)
    expected = (ahead @ ctrl.ahead_to_tmod.weight.T).view(B, 3, 6, C) * 3.0  # (B, f, 6, C)
    change = ctrl.ahead_change(ahead, None, block_idx=1)
    assert change.shape == (B, 3, 1, 6, C)
    torch.testing.assert_close(change[:, :, 0], expected)
    present = torch.tensor([[True, False, True], [False, True, True]])
    masked = ctrl.ahead_change(ahead, present, block_idx=1)
    torch.testing.assert_close(masked[:, :, 0], expected * present[..., None, None])
    assert torch.isfinite(masked).all()


def test_per_sample_t_mod_keeps_its_batch():
    """A t_mod per sample (B, L, 6, C) or (B, 6, C), e.g. a batch at different timesteps, adds each sample's own."""
    ctrl = make("adaln_tmod")
    _, binary, magnitude = inputs()
    emb = ctrl.build_action_emb(binary, magnitude)
    delta = ctrl.action_tmod(emb, H_GRID, W_GRID)[:, :, 0] * ctrl.output_scale[0]  # (B, T, 6, C)
    t_mod = torch.randn(B, FRAMES * N, 6, C)
    out = ctrl.add_to_tmod(t_mod, emb, FRAMES, H_GRID, W_GRID, block_idx=0).view(B, FRAMES, N, 6, C)
    torch.testing.assert_close(out[:, 2, 3], t_mod.view(B, FRAMES, N, 6, C)[:, 2, 3] + delta[:, 1])
    global_t_mod = torch.randn(B, 6, C)
    out = ctrl.add_to_tmod(global_t_mod, emb, FRAMES, H_GRID, W_GRID, block_idx=0).view(B, FRAMES, N, 6, C)
    torch.testing.assert_close(out[:, 3, 5], global_t_mod + delta[:, 2])


@pytest.mark.parametrize("injection_type", INJECTION_TYPES)
def test_changes_keep_the_autocast_dtype(injection_type):
    """Under bf16 autocast a change stays bf16 (the float32 scales are cast to it), as the DiT's blocks expect."""
    ctrl = make(injection_type, lookahead=True)
    x, binary, magnitude = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = ctrl.build_action_emb(binary, magnitude)
        change = ctrl.frame_change(x, emb, FRAMES, (H_GRID, W_GRID), block_idx=0, first_frame_is_image=True)
        ahead = ctrl.ahead_change(emb, None, block_idx=0)
    assert change.dtype == ahead.dtype == torch.bfloat16


# ---- spatial_tmod: an action delta that varies across the image ---------------------------------------------------
def test_token_coordinates_are_token_centres_row_major():
    grid = token_coordinates(2, 3)  # (N, 2) = (u, v)
    assert grid[:, 0].tolist() == pytest.approx([-2 / 3, 0, 2 / 3] * 2)
    assert grid[:, 1].tolist() == pytest.approx([-0.5] * 3 + [0.5] * 3)


def test_spatial_tmod_is_the_uniform_delta_plus_a_linear_field():
    """delta(token) = uniform + u * along_u + v * along_v, each from its own projection of the action token; zero
    init gives exactly the uniform delta of a controller without it."""
    plain = make("adaln_tmod").eval()
    spatial = make("adaln_tmod", spatial_tmod=True).eval()
    spatial.load_state_dict({**plain.state_dict(), "action_to_spatial_tmod.weight":
                             spatial.action_to_spatial_tmod.weight.detach().clone()})
    _, binary, magnitude = inputs()
    emb = plain.build_action_emb(binary, magnitude)  # (B, T, C)
    t_mod = torch.randn(1, FRAMES * N, 6, C)
    with torch.no_grad():
        uniform = plain.add_to_tmod(t_mod, emb, FRAMES, H_GRID, W_GRID, block_idx=1)  # (B, L, 6, C)
        assert torch.equal(spatial.add_to_tmod(t_mod, emb, FRAMES, H_GRID, W_GRID, block_idx=1), uniform)
        spatial.action_to_spatial_tmod.weight.normal_()
        out = spatial.add_to_tmod(t_mod, emb, FRAMES, H_GRID, W_GRID, block_idx=1)  # (B, L, 6, C)
    slopes = (emb @ spatial.action_to_spatial_tmod.weight.T).view(B, T, 2, 6, C) * spatial.output_scale[1]
    change = (out - uniform).view(B, FRAMES, N, 6, C)
    assert change[:, 0].abs().max() == 0  # the first image is never changed
    for token, (u, v) in enumerate(token_coordinates(H_GRID, W_GRID).tolist()):
        torch.testing.assert_close(change[:, 1:, token], u * slopes[:, :, 0] + v * slopes[:, :, 1])
    assert (change[:, 1:, 0] - change[:, 1:, W_GRID - 1]).abs().mean() > 1e-2  # left and right differ


def test_spatial_tmod_frame_change_is_the_chunked_change():
    ctrl = make("adaln_tmod", spatial_tmod=True).eval()
    with torch.no_grad():
        ctrl.action_to_spatial_tmod.weight.normal_()
    x, binary, magnitude = inputs()
    emb = ctrl.build_action_emb(binary, magnitude)  # (B, T, C)
    with torch.no_grad():
        full = ctrl.add_to_tmod(torch.zeros(1, FRAMES * N, 6, C), emb, FRAMES, H_GRID, W_GRID, block_idx=1)
        change = ctrl.frame_change(x, emb, FRAMES, (H_GRID, W_GRID), block_idx=1, first_frame_is_image=True)
    torch.testing.assert_close(change, full.view(B, FRAMES, N, 6, C), atol=1e-6, rtol=1e-5)


def test_spatial_tmod_needs_adaln_tmod():
    with pytest.raises(ValueError, match="spatial_tmod: needs injection_type 'adaln_tmod'"):
        ActionControllerConfig(injection_type="cross_attn_frame", spatial_tmod=True)
    with pytest.raises(ValueError, match="spatial_tmod: expected true or false"):
        ActionControllerConfig(injection_type="adaln_tmod", spatial_tmod=1)
