"""Block-causal Wan2.2-TI2V DiT: a video made block by block, each block attending to a sink and a rolling window.

Axis legend: B batch (branches at inference), C latent channels (48), F latent frames, h/w latent grid,
N = h*w/4 tokens per frame (after 2x2 patchify), L tokens of a forward, M cached context tokens, D hidden size,
T action steps, b frames per block, W window (frames).

Frames are grouped into blocks: frame 0 (the first image, clean, timestep 0) is a block of its own, then blocks of
``block_frames`` frames. A frame attends to its own block, to the ``window`` frames right before its block and,
with ``sink``, to frame 0; never to a later frame. Two paths compute exactly that:

    training   ``model_fn_causal``: a whole clip in one forward with a block-causal attention mask and a timestep
               per frame (diffusion forcing: every block at its own noise level)
    inference  ``forward_block``: one block's tokens attend to K/V kept in a ``models.kv_cache.KVCache``

RoPE positions: keys are cached before rotation and rotated at use. The sink sits at position 0, the window's frames
at the next positions in order, the block after them: the same layout as a training clip of ``1 + window + b``
frames, so once the window is full every block sees its context at the distances it was trained on, however long
the flight (positions never grow, the RoPE table of 1024 positions never runs out). Action tokens carry the
frame's index within its block (``block_action_emb``), for the same reason.

A controller with ``joint_previous`` denoises each block together with a clean copy of the latent frame before it
(timestep 0, that frame's RoPE position, no action): the copy and the block attend to each other both ways and to
the block's context, as a chunked world's first image and next frame do, so a block's actions act on a clean
picture. The copy's tokens sit after the block's; its output is dropped; the cache never holds it (the clean pass
that writes a block runs without a copy, as a training clip's context frames do). Needs ``window`` >= 1: the frame
before a block must be the window's last (or, for the first block, the sink).

A controller with ``lookahead`` also tells each context frame the action that drives the frame after it (``ahead``
in training: every frame before the clip's last block; in a stream: the clean pass that writes a block's keys and
values, run once the next block's actions are known, and the sink's, run with the first action).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from diffsynth.core import gradient_checkpoint_forward
from diffsynth.models.wan_video_dit import flash_attention, modulate, rope_apply, sinusoidal_embedding_1d
from einops import rearrange

from .kv_cache import KVCache
from .options import CausalSettings

_ROPE_CACHE: dict = {}
_ROPE_CACHE_SIZE = 16
_COMPILED = "_stream_compiled_parts"  # the DiT attribute compile_stream sets
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# ---- positions and masks -------------------------------------------------------------------------------------
def block_of_frames(num_frames: int, block_frames: int) -> torch.Tensor:
    """(F,) block index of each latent frame: frame 0 is block 0, then ``block_frames`` frames per block."""
    frames = torch.arange(num_frames)
    return torch.where(frames == 0, 0, (frames - 1) // block_frames + 1)  # (F,)


def frame_mask(num_frames: int, settings: CausalSettings) -> torch.Tensor:
    """(F, F) bool: query frame i may attend to key frame j (see the module docstring)."""
    block = block_of_frames(num_frames, settings.block_frames)  # (F,)
    first = torch.where(block == 0, 0, (block - 1) * settings.block_frames + 1)  # (F,) first frame of its block
    j = torch.arange(num_frames)[None, :]  # (1, F)
    same_block = block[:, None] == block[None, :]  # (F, F)
    in_window = (j < first[:, None]) & (j >= first[:, None] - settings.window)  # (F, F)
    return same_block | in_window | ((j == 0) & settings.sink)  # (F, F)


def last_block_start(num_frames: int, block_frames: int) -> int:
    """Index of the first frame of a clip's last block."""
    block = block_of_frames(num_frames, block_frames)  # (F,)
    return int((block == block.max()).nonzero()[0])


def joint_frame_mask(num_frames: int, settings: CausalSettings) -> torch.Tensor:
    """(F+1, F+1) ``frame_mask`` plus a last frame, the copy of the frame before the last block (joint_previous):
    the last block and the copy see each other; the copy sees what the block sees; earlier frames never see it."""
    base = frame_mask(num_frames, settings)  # (F, F)
    start = last_block_start(num_frames, settings.block_frames)
    mask = torch.zeros(num_frames + 1, num_frames + 1, dtype=torch.bool)
    mask[:num_frames, :num_frames] = base
    mask[:num_frames, num_frames] = torch.arange(num_frames) >= start  # the last block sees the copy
    mask[num_frames, :num_frames] = base[start]  # the copy: the block's context and the block
    mask[num_frames, num_frames] = True
    return mask  # (F+1, F+1)


def token_mask(num_frames: int, tokens_per_frame: int, settings: CausalSettings, device,
               joint: bool = False) -> torch.Tensor:
    """(L, L) bool attention mask of a clip's tokens (frame-major token order); ``joint``: with the copy frame
    last (``joint_frame_mask``)."""
    mask = joint_frame_mask(num_frames, settings) if joint else frame_mask(num_frames, settings)  # (F|F+1, ..)
    return mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1).to(device)  # (L, L)


def rope_table(dit, positions: tuple[int, ...], h: int, w: int, device) -> torch.Tensor:
    """(len(positions) * h * w, 1, D_head/2) complex RoPE table of frames at the given temporal positions."""
    key = (tuple(t.shape for t in dit.freqs), positions, h, w, str(device))
    table = _ROPE_CACHE.get(key)
    if table is None:
        f = len(positions)
        index = torch.tensor(positions)
        table = torch.cat([
            dit.freqs[0][index].view(f, 1, 1, -1).expand(f, h, w, -1),
            dit.freqs[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            dit.freqs[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ], dim=-1).reshape(f * h * w, 1, -1).to(device)  # (L, 1, D_head/2)
        if len(_ROPE_CACHE) >= _ROPE_CACHE_SIZE:
            _ROPE_CACHE.clear()
        _ROPE_CACHE[key] = table
    return table


# ---- actions ---------------------------------------------------------------------------------------------------
def block_action_emb(controller, binary: torch.Tensor, magnitude: torch.Tensor, block_frames: int,
                     first_index: int = 0) -> torch.Tensor:
    """(B, T, A) flags + scaled magnitudes -> (B, T, D) action tokens whose temporal embedding is the frame's index
    within its block (step s drives a frame at in-block index ``(first_index + s) % block_frames``)."""
    index = (torch.arange(binary.shape[1], device=binary.device) + first_index) % block_frames  # (T,)
    features = torch.cat([binary, magnitude], dim=-1)  # (B, T, 2A)
    return controller.action_embed(features) + controller.temporal_pos_embed[0, index]  # (B, T, D)


def ahead_action_emb(controller, binary: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """lookahead: (B, f, A) flags + scaled magnitudes of each frame's *next* action -> (B, f, D) tokens."""
    return controller.action_embed(torch.cat([binary, magnitude], dim=-1))  # (B, f, D)


# ---- one block ---------------------------------------------------------------------------------------------------
def _attention(q, k, v, heads: int, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, Lq, D) x (B, Lk, D) -> (B, Lq, D); diffsynth's fastest kernel without a mask, SDPA with one."""
    if mask is None:
        return flash_attention(q, k, v, num_heads=heads)
    q, k, v = (rearrange(t, "b s (n d) -> b n s d", n=heads) for t in (q, k, v))  # (B, H, L, D/H)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Lq, D/H)
    return rearrange(out, "b n s d -> b s (n d)")


def attention_inputs(block, x, t_mod, freqs):
    """A DiT block up to its self-attention: (q rotated, k before RoPE, k rotated, v; (B, L, D) each) and the
    modulations the rest of the block needs (gate_msa, shift_mlp, scale_mlp, gate_mlp; (B|1, L, D) each)."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        block.modulation.to(dtype=t_mod.dtype, device=t_mod.device) + t_mod).chunk(6, dim=2)  # (B|1, L, 1, D) each
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        t.squeeze(2) for t in (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp))
    attn = block.self_attn
    y = modulate(block.norm1(x), shift_msa, scale_msa)  # (B, L, D)
    q, k, v = attn.norm_q(attn.q(y)), attn.norm_k(attn.k(y)), attn.v(y)  # (B, L, D) each
    q_rot, k_rot = rope_apply(q, freqs, attn.num_heads), rope_apply(k, freqs, attn.num_heads)
    return (q_rot, k, k_rot, v), (gate_msa, shift_mlp, scale_mlp, gate_mlp)


def block_output(block, x, attended, context, gate_msa, shift_mlp, scale_mlp, gate_mlp):
    """A DiT block after its self-attention: the attended values (B, L, D) -> the block's output (B, L, D)."""
    x = block.gate(x, gate_msa, block.self_attn.o(attended))  # (B, L, D)
    x = x + block.cross_attn(block.norm3(x), context)
    return block.gate(x, gate_mlp, block.ffn(modulate(block.norm2(x), shift_mlp, scale_mlp)))  # (B, L, D)


def block_forward(block, x, context, t_mod, freqs, past_k=None, past_v=None, mask=None, parts=None):
    """``DiTBlock.forward`` with its self-attention extended by cached context (``past_k`` already rotated,
    ``past_v``; (B, M, D)) and/or a mask. Returns (x (B, L, D), k before RoPE (B, L, D), v (B, L, D)).
    ``parts``: (attention_inputs, block_output) to use instead of the eager ones (``compile_stream``)."""
    before, after = parts or (attention_inputs, block_output)
    (q_rot, k, k_rot, v), modulations = before(block, x, t_mod, freqs)
    if past_k is not None:
        k_rot, v_all = torch.cat([past_k, k_rot], dim=1), torch.cat([past_v, v], dim=1)  # (B, M+L, D)
    else:
        v_all = v
    attended = _attention(q_rot, k_rot, v_all, block.self_attn.num_heads, mask)  # (B, L, D)
    return after(block, x, attended, context, *modulations), k, v


def _timestep_modulation(dit, timesteps: torch.Tensor, tokens_per_frame: int):
    """(B, F) timesteps per frame -> t (B, L, D) for the head and t_mod (B, L, 6, D) for the blocks."""
    per_token = timesteps.repeat_interleave(tokens_per_frame, dim=1)  # (B, L)
    t = dit.time_embedding(sinusoidal_embedding_1d(dit.freq_dim, per_token.flatten()).unflatten(0, per_token.shape))
    return t, dit.time_projection(t).unflatten(2, (6, dit.dim))  # (B, L, D), (B, L, 6, D)


def _look_ahead(controller, block_idx: int, t_mod, ahead, f: int, n: int):
    """t_mod (B|1, L, 6, D) plus the lookahead delta of the frames that know their next action; ``ahead`` =
    (tokens (B, f, D), present (B, f) or None: all frames) or None."""
    if ahead is None or not controller.should_inject(block_idx):
        return t_mod
    delta = controller.ahead_change(ahead[0], ahead[1], block_idx)  # (B, f, 1, 6, D)
    per_frame = t_mod.view(t_mod.shape[0], f, n, 6, -1)  # (B|1, f, n, 6, D)
    return (per_frame + delta).reshape(delta.shape[0], f * n, 6, -1)  # (B, L, 6, D)


def _modulation(controller, block_idx: int, t_mod, x, action_emb, ahead, f: int, grid: tuple[int, int],
                first_is_image: bool):
    """t_mod (B|1, L, 6, D) of a block: the controller's change and the lookahead on the first ``f`` frames' tokens
    (``grid`` = (h, w) tokens each); tokens after them (a joint_previous copy) keep their own (no action)."""
    n = grid[0] * grid[1]
    own = f * n
    out = _inject(controller, block_idx, t_mod[:, :own], x[:, :own], action_emb, f, grid, True, first_is_image)
    out = _look_ahead(controller, block_idx, out, ahead, f, n)  # (B|1, f*n, 6, D)
    if t_mod.shape[1] == own:
        return out
    return torch.cat([out, t_mod[:, own:].expand(out.shape[0], -1, -1, -1)], dim=1)  # (B|1, L, 6, D)


def _after_block(controller, block_idx: int, t_mod, x, action_emb, f: int, grid: tuple[int, int],
                 first_is_image: bool):
    """The controller's change after a block, on the first ``f`` frames' tokens only (as ``_modulation``)."""
    own = f * grid[0] * grid[1]
    out = _inject(controller, block_idx, t_mod, x[:, :own], action_emb, f, grid, False, first_is_image)  # (B, f*n, D)
    return out if x.shape[1] == own else torch.cat([out, x[:, own:]], dim=1)  # (B, L, D)


def _inject(controller, block_idx: int, t_mod, x, action_emb, f: int, grid: tuple[int, int], before: bool,
            first_frame_is_image: bool):
    """The controller's change of one block: t_mod before it (adaln_tmod), the hidden states after it (others).
    ``first_frame_is_image``: frame 0 of these tokens is the first image, which actions never touch."""
    if controller is None or action_emb is None or not controller.should_inject(block_idx):
        return t_mod if before else x
    adaln = controller.injection_type == "adaln_tmod"
    if before != adaln:
        return t_mod if before else x
    B, n = x.shape[0], grid[0] * grid[1]
    delta = controller.frame_change(x, action_emb, f, grid, block_idx, first_frame_is_image)  # (B, f, n|1, 6?, D)
    if before:
        per_frame = t_mod.view(t_mod.shape[0], f, n, 6, -1)  # (B|1, f, n, 6, D)
        return (per_frame + delta).reshape(B, f * n, 6, -1)  # (B, L, 6, D)
    return (x.view(B, f, n, -1) + delta).view(B, f * n, -1)  # (B, L, D)


# ---- training: a whole clip, block-causal mask ---------------------------------------------------------------
def model_fn_causal(dit, controller, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                    settings: CausalSettings, action_binary: Optional[torch.Tensor] = None,
                    action_magnitude: Optional[torch.Tensor] = None,
                    use_gradient_checkpointing: bool = False, ahead: Optional[tuple] = None) -> torch.Tensor:
    """Velocity prediction (B, C, F, h, w) of a clip whose frame 0 is the first image: ``latents`` (B, C, F, h, w),
    ``timesteps`` (B, F) per frame (frame 0's is 0), ``context`` (B, S, D_text), actions (B, F-1, A) scaled.
    ``ahead`` = (binary (B, F, A), magnitude (B, F, A), present (B, F) bool): each frame's next action, used by a
    controller with ``lookahead`` (ignored otherwise). A ``joint_previous`` controller's last block is denoised
    with a copy of the frame before it (the module docstring)."""
    B, _, f, _, _ = latents.shape
    positions = tuple(range(f))
    joint = controller is not None and controller.config.joint_previous
    if joint:
        previous = _joint_previous_index(f, settings)
        latents = torch.cat([latents, latents[:, :, previous:previous + 1]], dim=2)  # (B, C, F+1, h, w)
        timesteps = torch.cat([timesteps, timesteps[:, previous:previous + 1]], dim=1)  # (B, F+1)
        positions += (previous,)
    x = dit.patchify(latents)  # (B, D, F(+1), h', w')
    h, w = x.shape[3:]
    n = h * w
    x = rearrange(x, "b c f h w -> b (f h w) c").contiguous()  # (B, L, D)
    t, t_mod = _timestep_modulation(dit, timesteps.to(x.dtype), n)  # (B, L, D), (B, L, 6, D)
    context = dit.text_embedding(context)  # (B, S, D)
    freqs = rope_table(dit, positions, h, w, x.device)  # (L, 1, D_head/2)
    mask = token_mask(f, n, settings, x.device, joint)  # (L, L)
    action_emb = ahead_emb = present = None
    dtype = None if controller is None else next(controller.parameters()).dtype
    if action_binary is not None and controller is not None:
        action_emb = block_action_emb(controller, action_binary.to(x.device, dtype),
                                      action_magnitude.to(x.device, dtype), settings.block_frames).to(x.dtype)
    if ahead is not None and controller is not None and controller.config.lookahead:
        ahead_emb = ahead_action_emb(controller, ahead[0].to(x.device, dtype),
                                     ahead[1].to(x.device, dtype)).to(x.dtype)  # (B, F, D)
        present = ahead[2].to(x.device)  # (B, F)

    def layer(block_idx, block):
        def run(x, context, t_mod, freqs, action_emb, ahead_emb):
            ahead = None if ahead_emb is None else (ahead_emb, present)
            block_t_mod = _modulation(controller, block_idx, t_mod, x, action_emb, ahead, f, (h, w), True)
            x, _, _ = block_forward(block, x, context, block_t_mod, freqs, mask=mask)
            return _after_block(controller, block_idx, t_mod, x, action_emb, f, (h, w), True)
        return run

    for block_idx, block in enumerate(dit.blocks):
        x = gradient_checkpoint_forward(layer(block_idx, block), use_gradient_checkpointing, False,
                                        x, context, t_mod, freqs, action_emb, ahead_emb)  # (B, L, D)
    x = dit.head(x[:, :f * n], t[:, :f * n])  # (B, F*N, C * 4): a joint copy's output is dropped
    return dit.unpatchify(x, (f, h, w))  # (B, C, F, h, w)


def _joint_previous_index(num_frames: int, settings: CausalSettings) -> int:
    """The frame a joint_previous clip's last block is denoised with: the one right before it."""
    if settings.window < 1:
        raise ValueError("joint_previous needs window >= 1: the frame before a block must be in its context")
    return last_block_start(num_frames, settings.block_frames) - 1


# ---- inference: one block against the cache ---------------------------------------------------------------------
def forward_block(dit, controller, latents: torch.Tensor, timestep: float, context: torch.Tensor, cache: KVCache,
                  action_emb: Optional[torch.Tensor] = None, write: bool = False,
                  first_frame_is_image: bool = False, ahead_emb: Optional[torch.Tensor] = None,
                  previous: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One block (B, C, b, h, w) at ``timestep`` against the cached context; ``context`` is already text-embedded
    (B, S, D). With ``write`` its keys and values are stored in the cache (the clean pass; ``ahead_emb`` (B, b, D):
    each frame's next action, for a controller with ``lookahead``). ``previous`` (B, C, 1, h, w): the clean frame
    before the block, denoised with it (``joint_previous``; never with ``write``). Returns the velocity prediction
    (B, C, b, h, w)."""
    B, _, f, _, _ = latents.shape
    timesteps = [float(timestep)] * f
    positions = cache.block_positions(f)
    if previous is not None:
        if write:
            raise ValueError("forward_block: the clean pass that writes the cache runs without the previous frame")
        latents = torch.cat([latents, previous], dim=2)  # (B, C, b+1, h, w)
        timesteps.append(0.0)
        positions += (cache.frames - 1,)  # the window's last frame (or the sink): the frame before the block
    x = dit.patchify(latents)  # (B, D, b(+1), h', w')
    h, w = x.shape[3:]
    n = h * w
    x = rearrange(x, "b c f h w -> b (f h w) c").contiguous()  # (B, L, D)
    t, t_mod = _timestep_modulation(dit, torch.tensor([timesteps], device=x.device, dtype=x.dtype), n)
    freqs = rope_table(dit, positions, h, w, x.device)  # (L, 1, D_head/2)
    parts = getattr(dit, _COMPILED, None)  # compile_stream's (attention_inputs, block_output), else eager
    ahead = None
    if ahead_emb is not None and controller is not None and controller.config.lookahead:
        ahead = (ahead_emb, None)  # (B, b, D): every frame of a clean pass has its next action
    for block_idx, block in enumerate(dit.blocks):
        block_t_mod = _modulation(controller, block_idx, t_mod, x, action_emb, ahead, f, (h, w), first_frame_is_image)
        past_k, past_v = cache.context(block_idx, lambda k, pos: rope_apply(k, rope_table(dit, pos, h, w, x.device),
                                                                         block.self_attn.num_heads))
        x, k, v = block_forward(block, x, context, block_t_mod, freqs, past_k, past_v, parts=parts)  # (B, L, D)
        if write:
            cache.write(block_idx, k, v)
        x = _after_block(controller, block_idx, t_mod, x, action_emb, f, (h, w), first_frame_is_image)
    if write:
        cache.advance(f)
    x = dit.head(x[:, :f * n], t[:, :f * n].expand(B, -1, -1))  # (B, b*N, C * 4): the copy's output dropped
    return dit.unpatchify(x, (f, h, w))  # (B, C, b, h, w)


def compile_stream(dit, mode: Optional[str] = "default", backend="inductor") -> None:
    """torch.compile the per-layer work of ``forward_block`` for this DiT, in place (``mode`` None: eager again).

    Streams call ``block_forward`` on a block's submodules, never ``DiTBlock.forward``, so the pipeline's
    ``compile_for_inference`` does not reach them. Compiled here is the block without its self-attention
    (``attention_inputs``, ``block_output``): their shapes depend on the block's own tokens, never on the cached
    context, which grows while the window fills. So nothing recompiles as the window fills or rolls: one graph per
    block shape (a stream's first block compiles it; the first image's sink pass has ``block_frames`` 1's shape),
    shared by all layers (parameters are graph inputs). The attention over the cache (a length that changes while
    the window fills) stays eager: it is one kernel either way. ``backend``: torch.compile's (tests count graphs)."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"mode: expected one of {', '.join(COMPILE_MODES)} or None (eager), got {mode!r}")
    if mode is None:
        if hasattr(dit, _COMPILED):
            delattr(dit, _COMPILED)
        return
    options = {"mode": mode} if backend == "inductor" else {}
    setattr(dit, _COMPILED, tuple(torch.compile(part, backend=backend, dynamic=False, **options)
                                  for part in (attention_inputs, block_output)))
