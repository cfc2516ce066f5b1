"""WanActionController: injects per-latent-frame drone actions into the Wan2.2 DiT.

Axis legend:
    B  batch                      T  action steps (= latent frames 1..T; latent frame 0 is the clean first image)
    F  latent frames (T + 1)      N  tokens per latent frame (h * w after 2x2 patchify)
    L  all tokens (F * N)         C  hidden size (3072 for Wan2.2-TI2V-5B)
    H  heads                      D  per-head width of the window attention (``window_head_dim``)
    W  action window (frames)     A  action_dim (8)

Injection types (``injection_type``):
    cross_attn_frame  the seed's per-frame cross-attention. Each frame attends to exactly one key (its own action
                      token), so softmax is identically 1 and the output is ``o_proj(v_proj(action_token))`` broadcast
                      over the frame. We compute exactly that: q/k/qk-norm could never receive gradient, so they are
                      not built (a seed checkpoint's q/k/norm keys are ignored on load).
    cross_attn_window each frame's tokens attend, per head with qk-norm, over the action tokens of a causal window of
                      the last ``action_window`` frames, with a learned per-head relative-position bias (zero init).
                      q/k live in a narrow per-head space (D) and the output projection is folded into the values
                      (o_proj is linear, so sum_s p_s * O v_s = O sum_s p_s v_s): the per-token cost is ~C*H*D, not C^2.
    adaln_tmod        a per-frame delta added to the per-token ``t_mod`` of each injected block (zero for frame 0).
    add_residual      ``action_to_residual(action_token)`` added to the frame's tokens after each injected block.
Every type honours ``inject_layers`` and multiplies its change by the per-layer learnable ``output_scale``.

``lookahead`` (block-causal streams, ``models.causal``; any type): a context frame's tokens are also told the action
that drives the frame *after* it, as a second t_mod delta (``ahead_to_tmod``, zero init, per-layer ``ahead_scale``).
In a stream the context frames are the only tokens with a clean picture; without it the action reaches only the
noisy block's own tokens, and the causal toy worlds learned to ignore it (docs/toyworld.md). The stream writes a
block's keys and values when the next block's actions arrive, so the cache then carries them.

``joint_previous`` (block-causal streams; any type): each block is denoised together with a clean copy of the
latent frame before it, the two attending to each other both ways, as a chunked world's first image and its next
frame do (``models.causal``). The copy gets no action; the block's actions reach a clean picture through it.
The module holds no per-call state: everything arrives as arguments, so gradient checkpointing can recompute it.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from .config_io import config_from_dict

logger = logging.getLogger(__name__)

INJECTION_TYPES = ("cross_attn_frame", "cross_attn_window", "adaln_tmod", "add_residual")
# Every key the seed's all-branches controller can hold.
_ADDITION_PREFIXES = ("ahead_", "action_to_spatial_tmod.")  # options that start at zero (with_own_additions)
_SEED_PREFIXES = ("q_proj.", "k_proj.", "v_proj.", "o_proj.", "q_norm.", "k_norm.", "action_to_tmod.",
                  "action_to_residual.")


@dataclass
class ActionControllerConfig:
    """Constructor arguments of WanActionController (the seed's, plus the window type's)."""
    action_dim: int = 8
    hidden_size: int = 3072
    num_heads: int = 24
    num_latent_frames: int = 20
    num_layers: int = 30
    inject_layers: Optional[list[int]] = None
    qk_norm: bool = True
    dropout: float = 0.0
    initial_scale: float = 0.01
    injection_type: str = "cross_attn_frame"
    action_window: int = 4
    window_head_dim: int = 32
    lookahead: bool = False  # streams: context frames also see the next frame's action (module docstring)
    joint_previous: bool = False  # streams: a block is denoised with a clean copy of the frame before it
    spatial_tmod: bool = False  # adaln_tmod: the delta also varies linearly across the image (module docstring)

    def __post_init__(self):
        if self.injection_type not in INJECTION_TYPES:
            raise ValueError(f"injection_type: unknown {self.injection_type!r}; "
                             f"expected one of {list(INJECTION_TYPES)}")
        for name in ("action_dim", "hidden_size", "num_heads", "num_latent_frames", "num_layers", "action_window",
                     "window_head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.inject_layers is not None:
            self.inject_layers = sorted({int(i) for i in self.inject_layers})
            bad = [i for i in self.inject_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"inject_layers: {bad} outside 0..{self.num_layers - 1}")
        for name in ("lookahead", "joint_previous", "spatial_tmod"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected 0 <= dropout < 1, got {self.dropout}")
        if self.spatial_tmod and self.injection_type != "adaln_tmod":
            raise ValueError(f"spatial_tmod: needs injection_type 'adaln_tmod', got {self.injection_type!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ActionControllerConfig":
        return config_from_dict(cls, data, "action controller config")


def _preset(**overrides) -> dict:
    return ActionControllerConfig(**overrides).to_dict()


# The controller presets: the seed's four, the window variant, and `tiny` (matches models.tiny's DiT).
ACTION_CONTROLLER_CONFIGS: dict[str, dict] = {
    "wan_ti2v_5b": _preset(),
    "wan_ti2v_5b_sparse": _preset(inject_layers=list(range(0, 30, 3))),
    "wan_ti2v_5b_adaln": _preset(injection_type="adaln_tmod"),
    "wan_ti2v_5b_add": _preset(injection_type="add_residual"),
    "wan_ti2v_5b_window": _preset(injection_type="cross_attn_window"),
    "tiny": _preset(hidden_size=64, num_heads=2, num_layers=2, window_head_dim=16),
}


def resolve_controller_config(preset_or_dict, **overrides) -> ActionControllerConfig:
    """A preset name or a config dict, with non-None overrides applied (e.g. injection_type)."""
    if isinstance(preset_or_dict, str):
        if preset_or_dict not in ACTION_CONTROLLER_CONFIGS:
            raise ValueError(f"action_controller_config: unknown preset {preset_or_dict!r}; "
                             f"expected one of {list(ACTION_CONTROLLER_CONFIGS)}")
        data = dict(ACTION_CONTROLLER_CONFIGS[preset_or_dict])
    else:
        data = dict(preset_or_dict)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return ActionControllerConfig.from_dict(data)


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def token_coordinates(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """(h * w, 2) each token's (u, v) centre in [-1, 1], row-major like the DiT's tokens (u across, v down)."""
    v = (torch.arange(h, device=device, dtype=dtype) + 0.5) * (2.0 / h) - 1.0  # (h,)
    u = (torch.arange(w, device=device, dtype=dtype) + 0.5) * (2.0 / w) - 1.0  # (w,)
    return torch.stack([u.expand(h, w), v[:, None].expand(h, w)], dim=-1).reshape(h * w, 2)  # (N, 2)


def _frame_expand(per_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, T, ...) action-step values -> (B, F, ...) with zeros for latent frame 0 (the first image)."""
    zero = per_frame.new_zeros(per_frame.shape[0], num_frames - per_frame.shape[1], *per_frame.shape[2:])
    return torch.cat([zero, per_frame], dim=1)  # (B, F, ...)


class WanActionController(nn.Module):
    """Action controller for the Wan2.2 DiT (drone control). See the module docstring for the design."""

    def __init__(self, action_dim: int = 8, hidden_size: int = 3072, num_heads: int = 24,
                 num_latent_frames: int = 20, inject_layers: Optional[list] = None, num_layers: int = 30,
                 qk_norm: bool = True, dropout: float = 0.0, initial_scale: float = 0.01,
                 injection_type: str = "cross_attn_frame", action_window: int = 4, window_head_dim: int = 32,
                 lookahead: bool = False, joint_previous: bool = False, spatial_tmod: bool = False):
        super().__init__()
        self.config = ActionControllerConfig(
            action_dim=action_dim, hidden_size=hidden_size, num_heads=num_heads, num_latent_frames=num_latent_frames,
            num_layers=num_layers, inject_layers=inject_layers, qk_norm=qk_norm, dropout=dropout,
            initial_scale=initial_scale, injection_type=injection_type, action_window=action_window,
            window_head_dim=window_head_dim, lookahead=lookahead, joint_previous=joint_previous,
            spatial_tmod=spatial_tmod)
        cfg = self.config
        self.injection_type = cfg.injection_type
        self.hidden_size, self.num_heads, self.num_layers = hidden_size, num_heads, num_layers
        self.num_latent_frames = num_latent_frames
        self.inject_layers = set(range(num_layers)) if cfg.inject_layers is None else set(cfg.inject_layers)
        C = hidden_size

        self.action_embed = nn.Sequential(nn.Linear(action_dim * 2, C), nn.SiLU(), nn.Linear(C, C))
        self.temporal_pos_embed = nn.Parameter(torch.randn(1, num_latent_frames, C) * 0.02)  # (1, T_max, C)
        if self.injection_type == "cross_attn_frame":
            self.v_proj = nn.Linear(C, C, bias=False)
            self.o_proj = nn.Linear(C, C, bias=False)
        elif self.injection_type == "cross_attn_window":
            inner = num_heads * window_head_dim
            self.q_proj = nn.Linear(C, inner, bias=False)
            self.k_proj = nn.Linear(C, inner, bias=False)
            self.v_proj = nn.Linear(C, C, bias=False)
            self.o_proj = nn.Linear(C, C, bias=False)
            self.q_norm = WanRMSNorm(window_head_dim) if qk_norm else nn.Identity()
            self.k_norm = WanRMSNorm(window_head_dim) if qk_norm else nn.Identity()
            self.rel_pos_bias = nn.Parameter(torch.zeros(num_heads, action_window))  # (H, W); [:, 0] = own frame
        elif self.injection_type == "adaln_tmod":
            self.action_to_tmod = nn.Linear(C, C * 6, bias=False)
            if cfg.spatial_tmod:  # zero init: the delta starts uniform over the image, as without it
                self.action_to_spatial_tmod = nn.Linear(C, C * 12, bias=False)
                nn.init.zeros_(self.action_to_spatial_tmod.weight)
        else:
            self.action_to_residual = nn.Linear(C, C, bias=False)
        self.output_scale = nn.Parameter(torch.ones(num_layers) * initial_scale)  # (num_layers,)
        if cfg.lookahead:  # zero init: a world gaining it starts exactly where it was
            self.ahead_to_tmod = nn.Linear(C, C * 6, bias=False)
            nn.init.zeros_(self.ahead_to_tmod.weight)
            self.ahead_scale = nn.Parameter(torch.ones(num_layers))  # (num_layers,)
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, config) -> "WanActionController":
        cfg = config if isinstance(config, ActionControllerConfig) else ActionControllerConfig.from_dict(config)
        return cls(**cfg.to_dict())

    def should_inject(self, block_idx: int) -> bool:
        return block_idx in self.inject_layers

    # ---- action tokens -------------------------------------------------------------------------------------
    def build_action_emb(self, action_binary: torch.Tensor, action_magnitude: torch.Tensor) -> torch.Tensor:
        """(B, T, A) flags + (B, T, A) scaled magnitudes -> (B, T, C) action tokens."""
        steps = action_binary.shape[1]
        if steps > self.num_latent_frames:
            raise ValueError(f"actions: {steps} steps exceed the controller's num_latent_frames "
                             f"({self.num_latent_frames})")
        features = torch.cat([action_binary, action_magnitude], dim=-1)  # (B, T, 2A)
        return self.action_embed(features) + self.temporal_pos_embed[:, :steps]  # (B, T, C)

    def action_tmod(self, action_emb: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, T, C) -> (B, T, N|1, 6, C) adaLN modulation deltas (adaln_tmod only): one per frame, or with
        ``spatial_tmod`` one per token of the h x w grid, ``uniform + u * along_u + v * along_v``."""
        delta = self.action_to_tmod(action_emb).unflatten(-1, (6, self.hidden_size)).unsqueeze(2)  # (B, T, 1, 6, C)
        if not self.config.spatial_tmod:
            return delta
        slopes = self.action_to_spatial_tmod(action_emb).unflatten(-1, (2, 6, self.hidden_size))  # (B, T, 2, 6, C)
        grid = token_coordinates(h, w, delta.device, delta.dtype)  # (N, 2)
        return delta + torch.einsum("nk,btkjc->btnjc", grid, slopes)  # (B, T, N, 6, C)

    # ---- injection -----------------------------------------------------------------------------------------
    def _scaled(self, delta: torch.Tensor, block_idx: int) -> torch.Tensor:
        return self.dropout(delta) * self.output_scale[block_idx].to(delta.dtype)

    def add_to_tmod(self, t_mod: torch.Tensor, action_emb: torch.Tensor, f: int, h: int, w: int,
                    block_idx: int) -> torch.Tensor:
        """adaln_tmod: t_mod (1, L, 6, C) per token, or (1, 6, C) global -> (B, L, 6, C) with the action delta."""
        delta = _frame_expand(self._scaled(self.action_tmod(action_emb, h, w), block_idx), f)  # (B, F, N|1, 6, C)
        per_frame_tmod = t_mod.view(t_mod.shape[0], f, h * w, 6, -1) if t_mod.dim() == 4 \
            else t_mod.view(t_mod.shape[0], 1, 1, 6, -1)  # (1, F, N, 6, C) or (1, 1, 1, 6, C)
        out = per_frame_tmod + delta  # (B, F, N|1, 6, C)
        return out.expand(-1, f, h * w, 6, -1).reshape(out.shape[0], f * h * w, 6, -1)  # (B, L, 6, C)

    def frame_delta(self, action_emb: torch.Tensor, block_idx: int) -> torch.Tensor:
        """cross_attn_frame / add_residual: (B, T, C) per-frame change (same for every token of a frame)."""
        if self.injection_type == "cross_attn_frame":
            delta = self.o_proj(self.v_proj(action_emb))  # (B, T, C): softmax over a single key is 1
        else:
            delta = self.action_to_residual(action_emb)  # (B, T, C)
        return self._scaled(delta, block_idx)

    def window_attention(self, hidden_states: torch.Tensor, action_emb: torch.Tensor, f: int, h: int,
                         w: int) -> torch.Tensor:
        """cross_attn_window: (B, L, C) tokens x (B, T, C) action tokens -> (B, T, N, C) unscaled change of the last
        T frames (the frames ``_frame_expand`` gives the actions to)."""
        B, T, C = action_emb.shape
        return self._window_attend(hidden_states.view(B, f, h * w, C)[:, f - T:], action_emb)  # (B, T, N, C)

    def _window_attend(self, tokens: torch.Tensor, action_emb: torch.Tensor) -> torch.Tensor:
        """(B, Tq, N, C) tokens of the last Tq action steps x (B, S, C) action tokens (S >= Tq; the first S - Tq
        are history) -> (B, Tq, N, C) unscaled change."""
        B, S, C = action_emb.shape
        Tq, H, D = tokens.shape[1], self.num_heads, self.config.window_head_dim
        q = self.q_norm(self.q_proj(tokens).unflatten(-1, (H, D)))  # (B, Tq, N, H, D)
        k = self.k_norm(self.k_proj(action_emb).unflatten(-1, (H, D)))  # (B, S, H, D)
        v = self.v_proj(action_emb).unflatten(-1, (H, C // H))  # (B, S, H, C/H)
        # Fold o_proj into the values: u[s, h] = O[:, head h] @ v[s, h].
        o_weight = self.o_proj.weight.view(C, H, C // H)  # (C_out, H, C/H)
        u = torch.einsum("bshe,che->bshc", v, o_weight)  # (B, S, H, C)
        scores = torch.einsum("btnhd,bshd->bthns", q, k) * D ** -0.5  # (B, Tq, H, N, S)
        bias = self._window_bias(S, scores.device, scores.dtype)[S - Tq:]  # (Tq, H, S)
        probs = torch.softmax(scores + bias[None, :, :, None, :], dim=-1)  # (B, Tq, H, N, S)
        return torch.einsum("bthns,bshc->btnc", probs, u)  # (B, Tq, N, C)

    def _window_bias(self, steps: int, device, dtype) -> torch.Tensor:
        """(T, H, S) relative-position bias inside the causal window, -inf outside it."""
        W = self.config.action_window
        offset = torch.arange(steps, device=device)[:, None] - torch.arange(steps, device=device)[None, :]  # (T, S)
        inside = (offset >= 0) & (offset < W)
        bias = self.rel_pos_bias.to(dtype)[:, offset.clamp(0, W - 1)]  # (H, T, S)
        bias = bias.masked_fill(~inside[None], float("-inf"))
        return bias.permute(1, 0, 2)  # (T, H, S)

    def apply_action(self, hidden_states: torch.Tensor, action_emb: torch.Tensor, t: int, h: int, w: int,
                     block_idx: int) -> torch.Tensor:
        """After-block injection (cross_attn_frame, cross_attn_window, add_residual): (B, L, C) -> (B, L, C).

        ``t`` is the number of latent frames F (the seed's name). Frame 0 is never changed.
        """
        B, L, C = hidden_states.shape
        if self.injection_type == "cross_attn_window":
            change = self._scaled(self.window_attention(hidden_states, action_emb, t, h, w), block_idx)  # (B,T,N,C)
            change = _frame_expand(change, t)  # (B, F, N, C)
        else:
            change = _frame_expand(self.frame_delta(action_emb, block_idx), t).unsqueeze(2)  # (B, F, 1, C)
        return (hidden_states.view(B, t, h * w, C) + change).view(B, L, C)

    def frame_change(self, hidden_states: torch.Tensor, action_emb: torch.Tensor, f: int, grid: tuple[int, int],
                     block_idx: int, first_frame_is_image: bool) -> torch.Tensor:
        """The scaled change of ``f`` frames of ``grid`` = (h, w) tokens (block-causal path, ``models.causal``): a
        t_mod delta (B, f, 1|N, 6, C) for adaln_tmod, else a hidden-state delta (B, f, 1|N, C). The last action
        tokens of ``action_emb`` (B, S, C) drive the frames (earlier ones are history for the window type); a first
        frame that is the first image gets no change."""
        B, steps, n = hidden_states.shape[0], f - int(first_frame_is_image), grid[0] * grid[1]
        if self.injection_type == "adaln_tmod":
            delta = self._scaled(self.action_tmod(action_emb[:, -steps:], *grid), block_idx)  # (B, T, 1|N, 6, C)
        elif self.injection_type == "cross_attn_window":
            tokens = hidden_states.view(B, f, n, -1)[:, f - steps:]  # (B, T, N, C)
            delta = self._scaled(self._window_attend(tokens, action_emb), block_idx)  # (B, T, N, C)
        else:
            delta = self.frame_delta(action_emb[:, -steps:], block_idx).unsqueeze(2)  # (B, T, 1, C)
        delta = delta.expand(B, *delta.shape[1:])
        return _frame_expand(delta, f) if first_frame_is_image else delta  # (B, f, ...)

    def ahead_change(self, ahead_emb: torch.Tensor, present: Optional[torch.Tensor], block_idx: int) -> torch.Tensor:
        """lookahead: (B, f, C) tokens of each frame's next action, (B, f) whether a frame has one (None: all do)
        -> the t_mod delta (B, f, 1, 6, C) (zero where absent)."""
        delta = self.ahead_to_tmod(ahead_emb).unflatten(-1, (6, self.hidden_size))  # (B, f, 6, C)
        delta = delta * self.ahead_scale[block_idx].to(delta.dtype)
        if present is not None:
            delta = delta * present[..., None, None].to(delta.dtype)
        return delta.unsqueeze(2)  # (B, f, 1, 6, C)

    def forward(self, hidden_states, action_binary, action_magnitude, t: int, h: int, w: int, block_idx: int):
        """The seed's convenience entry point: embed the actions, then apply them after one block."""
        action_emb = self.build_action_emb(action_binary, action_magnitude)
        return self.apply_action(hidden_states, action_emb, t, h, w, block_idx)

    # ---- loading -------------------------------------------------------------------------------------------
    def with_own_additions(self, state_dict: dict) -> dict:
        """``state_dict`` plus this controller's own lookahead and spatial_tmod weights (zero-init) where it lacks
        them: a controller trained without either then loads and starts exactly as it was."""
        own = self.state_dict()
        return {**{k: v for k, v in own.items() if k.startswith(_ADDITION_PREFIXES)}, **state_dict}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Strict by default. Also accepts the seed's all-branches layout: keys of branches this injection type
        does not build are ignored with one log line; a missing needed key, a shape mismatch or any other
        unknown key is an error."""
        own = self.state_dict()
        needed = set(own)
        ignorable = tuple(p for p in _SEED_PREFIXES if not any(k.startswith(p) for k in needed))
        if self.injection_type == "cross_attn_window":
            ignorable = ()  # the seed has no window parameters: a seed checkpoint never fits this type
        ignored = sorted(k for k in state_dict if k not in needed and k.startswith(ignorable))
        unknown = sorted(k for k in state_dict if k not in needed and k not in ignored)
        missing = sorted(needed - set(state_dict))
        problems = []
        if missing:
            hint = (" (a seed checkpoint cannot load into cross_attn_window: it lacks the window's "
                    "rel_pos_bias and narrow q/k projections; train this type from scratch)"
                    if self.injection_type == "cross_attn_window" else "")
            problems.append(f"missing keys {missing}{hint}")
        if unknown:
            problems.append(f"unexpected keys {unknown}")
        for key in sorted(needed & set(state_dict)):
            if tuple(state_dict[key].shape) != tuple(own[key].shape):
                problems.append(f"{key}: checkpoint shape {tuple(state_dict[key].shape)} != "
                                f"controller shape {tuple(own[key].shape)}")
        if problems and strict:
            raise ValueError(f"action controller ({self.injection_type}, hidden_size {self.hidden_size}) cannot "
                             f"load this state dict: " + "; ".join(problems))
        if ignored:
            logger.info("action controller (%s): ignoring %d keys of unused seed branches (%s)",
                        self.injection_type, len(ignored), ", ".join(sorted({k.split('.')[0] for k in ignored})))
        kept = {k: v for k, v in state_dict.items() if k in needed}
        return super().load_state_dict(kept, strict=strict, assign=assign)
