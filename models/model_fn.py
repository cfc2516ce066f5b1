"""The DiT forward with action injection, used in place of diffsynth's ``model_fn_wan_video``.

Axis legend: B batch, C latent/hidden channels, F latent frames, h/w latent grid after patchify,
N = h*w tokens per frame, L = F*N tokens, T action steps (= F - 1), D hidden size.

It mirrors the stock function's TI2V (fused first frame, per-token timestep) and text-to-video paths step by step,
so a zero-scale controller gives bit-identical output; with no actions it calls the stock function (a small world
whose DiT tokens are not 2x2 latent cells, which the stock function assumes, runs this mirror without actions).
"""
from __future__ import annotations

import torch
from diffsynth.core import gradient_checkpoint_forward
from diffsynth.models.wan_video_dit import sinusoidal_embedding_1d
from diffsynth.pipelines.wan_video import model_fn_wan_video
from einops import rearrange

# Stock inputs this path does not implement: passing any of them with actions is an error, not a silent drop.
_UNSUPPORTED_WITH_ACTIONS = (
    "vace_context", "reference_latents", "audio_embeds", "vap_hidden_state", "pose_latents", "motion_bucket_id",
    "sliding_window_size", "tea_cache", "control_camera_latents_input", "longcat_latents", "music_feature",
)


WAN_PATCH = (1, 2, 2)  # the stock forward's patch size (frames, height, width), which it assumes


def tokens_per_frame(dit, h: int, w: int) -> int:
    """The DiT tokens of one latent frame of an h x w latent grid (its patches: 2x2 cells in Wan2.2)."""
    return h * w // (dit.patch_size[1] * dit.patch_size[2])

# (freqs table shapes, f, h, w, device) -> (L, 1, D_head/2) complex RoPE table. Building it costs a CPU
# concatenation and (on GPU) a pageable host-to-device copy per DiT call, because ``dit.freqs`` is a plain CPU
# attribute that ``.to(device)`` never moves; its values depend only on those shapes, so it is built once.
_ROPE_CACHE: dict = {}
_ROPE_CACHE_SIZE = 8


def rope_freqs(dit, f: int, h: int, w: int, device) -> torch.Tensor:
    """The per-token RoPE table of an (f, h, w) grid, as the stock forward builds it, cached per grid and device."""
    key = (tuple(t.shape for t in dit.freqs), f, h, w, str(device))
    table = _ROPE_CACHE.get(key)
    if table is None:
        table = torch.cat([
            dit.freqs[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            dit.freqs[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            dit.freqs[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ], dim=-1).reshape(f * h * w, 1, -1).to(device)  # (L, 1, D_head/2) complex
        if len(_ROPE_CACHE) >= _ROPE_CACHE_SIZE:
            _ROPE_CACHE.clear()
        _ROPE_CACHE[key] = table
    return table


def _action_emb(controller, action_binary, action_magnitude, x) -> torch.Tensor:
    """(B_a, T, A) raw flags and scaled magnitudes -> (B, T, D) action tokens for the video batch of ``x``."""
    controller_dtype = next(controller.parameters()).dtype
    binary = action_binary.to(device=x.device, dtype=controller_dtype)  # (B_a, T, A)
    magnitude = action_magnitude.to(device=x.device, dtype=controller_dtype)  # (B_a, T, A)
    if binary.shape[0] != x.shape[0]:
        if binary.shape[0] != 1:
            raise ValueError(f"actions: batch {binary.shape[0]} does not match the video batch {x.shape[0]}")
        binary, magnitude = binary.expand(x.shape[0], -1, -1), magnitude.expand(x.shape[0], -1, -1)
    return controller.build_action_emb(binary, magnitude).to(x.dtype)  # (B, T, D)


def _block_forward(block, controller, block_idx: int, f: int, h: int, w: int):
    """One DiT block plus its action injection (none when ``controller`` is None), as a closure over (f, h, w,
    block index) so gradient checkpointing recomputes both from the same inputs (no mutable state)."""
    inject = controller is not None and controller.should_inject(block_idx)
    adaln = controller is not None and controller.injection_type == "adaln_tmod"

    def forward(x, context, t_mod, freqs, action_emb):
        if inject and adaln:
            t_mod = controller.add_to_tmod(t_mod, action_emb, f, h, w, block_idx)  # (B, L, 6, D)
        x = block(x, context, t_mod, freqs)  # (B, L, D)
        if inject and not adaln:
            x = controller.apply_action(x, action_emb, f, h, w, block_idx)  # (B, L, D)
        return x
    return forward


def _check_supported(kwargs, what: str = "actions"):
    used = [name for name in _UNSUPPORTED_WITH_ACTIONS if kwargs.get(name) is not None]
    if used:
        raise ValueError(f"{what} cannot be combined with {used}: the action path implements TI2V/T2V only")


def _check_inputs(dit, latents, action_binary, action_magnitude, kwargs):
    _check_supported(kwargs)
    if dit.require_vae_embedding or dit.require_clip_embedding or dit.has_image_input:
        raise ValueError("actions need a Wan2.2-TI2V style DiT (no CLIP/VAE image embedding)")
    steps = latents.shape[2] - 1
    if action_binary.shape[1] != steps or action_magnitude.shape[1] != steps:
        raise ValueError(f"actions: {action_binary.shape[1]} steps given, but the video has {latents.shape[2]} "
                         f"latent frames, which need {steps} (one per latent frame after the first)")


def _expand_batch(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if tensor.shape[0] not in (1, batch):
        raise ValueError(f"{name}: batch {tensor.shape[0]} does not match the video batch {batch}")
    return tensor.expand(batch, *tensor.shape[1:])


def rescale_guided(guided: torch.Tensor, commanded: torch.Tensor, rescale: float,
                   skip_first_frame: bool) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed"): blend by
    ``rescale`` towards the guided prediction scaled to the commanded one's standard deviation. Unscaled, g > 1
    inflates each step's contrast, which an autoregressive flight compounds into over-saturated stripes. The fused
    first frame (TI2V) is the clean image, its prediction discarded, so it does not count."""
    frames = slice(1, None) if skip_first_frame and guided.shape[2] > 1 else slice(None)
    dims = (1, 2, 3, 4)
    std_commanded = commanded[:, :, frames].std(dim=dims, keepdim=True)  # (B, 1, 1, 1, 1)
    std_guided = guided[:, :, frames].std(dim=dims, keepdim=True).clamp_min(1e-12)  # (B, 1, 1, 1, 1)
    return rescale * guided * (std_commanded / std_guided) + (1 - rescale) * guided  # (B, C, F, H, W)


def guide(commanded: torch.Tensor, hover: torch.Tensor, guidance: float, rescale: float,
          skip_first_frame: bool = False) -> torch.Tensor:
    """(B, C, F, H, W) ``hover + guidance * (commanded - hover)``, then ``rescale_guided`` unless ``rescale`` is 0:
    one action-guided step, the same in a chunk (``model_fn_action_guided``), a stream and a training rollout."""
    guided = hover + guidance * (commanded - hover)  # (B, C, F, H, W)
    return guided if rescale == 0.0 else rescale_guided(guided, commanded, rescale, skip_first_frame)


def model_fn_action_guided(action_guidance: float, latents, context, action_binary, action_magnitude,
                           action_guidance_rescale: float = 0.0, **kwargs):
    """Action guidance: ``hover + g * (commanded - hover)``, both predictions in one batched forward. Hovering
    (all actions off) is an action every training flight mix contains, so it serves as the unconditional branch
    of classifier-free guidance without training a null action; g > 1 amplifies what the actions change.
    ``action_guidance_rescale`` in [0, 1] then pulls the result's contrast back (``rescale_guided``; 0 = off)."""
    batch = max(latents.shape[0], context.shape[0])  # cfg_merge: one latent, two prompts
    binary = _expand_batch(action_binary, batch, "actions")  # (B, T, A)
    magnitude = _expand_batch(action_magnitude, batch, "actions")  # (B, T, A)
    both = model_fn_wan_action(
        latents=torch.cat([_expand_batch(latents, batch, "latents")] * 2),  # (2B, C, F, H, W)
        context=torch.cat([_expand_batch(context, batch, "context")] * 2),  # (2B, S_text, D_text)
        action_binary=torch.cat([binary, torch.zeros_like(binary)]),  # (2B, T, A): commanded, then hover
        action_magnitude=torch.cat([magnitude, torch.zeros_like(magnitude)]), **kwargs)  # (2B, C, F, H, W)
    commanded, hover = both.chunk(2)  # (B, C, F, H, W) each
    return guide(commanded, hover, action_guidance, action_guidance_rescale,
                 skip_first_frame=kwargs.get("fuse_vae_embedding_in_latents", False))


def model_fn_wan_action(dit, action_controller=None, latents=None, timestep=None, context=None,
                        action_binary=None, action_magnitude=None, fuse_vae_embedding_in_latents: bool = False,
                        use_gradient_checkpointing: bool = False, use_gradient_checkpointing_offload: bool = False,
                        action_guidance: float = 1.0, action_guidance_rescale: float = 0.0, **kwargs):
    if action_binary is not None and action_guidance != 1.0:
        return model_fn_action_guided(
            action_guidance, latents, context, action_binary, action_magnitude,
            action_guidance_rescale=action_guidance_rescale, dit=dit,
            action_controller=action_controller, timestep=timestep,
            fuse_vae_embedding_in_latents=fuse_vae_embedding_in_latents,
            use_gradient_checkpointing=use_gradient_checkpointing,
            use_gradient_checkpointing_offload=use_gradient_checkpointing_offload, **kwargs)
    if action_binary is None and tuple(dit.patch_size) == WAN_PATCH:
        return model_fn_wan_video(
            dit=dit, latents=latents, timestep=timestep, context=context,
            fuse_vae_embedding_in_latents=fuse_vae_embedding_in_latents,
            use_gradient_checkpointing=use_gradient_checkpointing,
            use_gradient_checkpointing_offload=use_gradient_checkpointing_offload, **kwargs)
    if action_binary is None:  # the stock forward's per-token timestep assumes 2x2 patches: this mirror, no actions
        action_controller = None
        _check_supported(kwargs, "a DiT with patch size " + str(tuple(dit.patch_size)))
    elif action_controller is None:
        raise ValueError("actions were given but the pipeline has no action controller "
                         "(call pipe.set_action_controller(...) or pipe.load_action_artifacts(folder))")
    else:
        _check_inputs(dit, latents, action_binary, action_magnitude, kwargs)

    # Timestep: per token for TI2V (frame 0 is the clean image, timestep 0), global otherwise.
    if dit.seperated_timestep and fuse_vae_embedding_in_latents:
        n = tokens_per_frame(dit, latents.shape[3], latents.shape[4])
        timestep = torch.concat([
            torch.zeros((1, n), dtype=latents.dtype, device=latents.device),
            torch.ones((latents.shape[2] - 1, n), dtype=latents.dtype, device=latents.device) * timestep,
        ]).flatten()  # (L,)
        t = dit.time_embedding(sinusoidal_embedding_1d(dit.freq_dim, timestep).unsqueeze(0))  # (1, L, D)
        t_mod = dit.time_projection(t).unflatten(2, (6, dit.dim))  # (1, L, 6, D)
    else:
        t = dit.time_embedding(sinusoidal_embedding_1d(dit.freq_dim, timestep))  # (1, D)
        t_mod = dit.time_projection(t).unflatten(1, (6, dit.dim))  # (1, 6, D)
    context = dit.text_embedding(context)  # (B, S_text, D)

    x = latents  # (B, C, F, H, W)
    if x.shape[0] != context.shape[0]:  # cfg_merge: one latent, two prompts
        x = torch.concat([x] * context.shape[0], dim=0)
    x = dit.patchify(x)  # (B, D, F, h, w)
    f, h, w = x.shape[2:]
    x = rearrange(x, "b c f h w -> b (f h w) c").contiguous()  # (B, L, D)
    freqs = rope_freqs(dit, f, h, w, x.device)  # (L, 1, D_head/2) complex

    action_emb = None if action_controller is None else _action_emb(action_controller, action_binary,
                                                                     action_magnitude, x)  # (B, T, D)

    for block_idx, block in enumerate(dit.blocks):
        x = gradient_checkpoint_forward(
            _block_forward(block, action_controller, block_idx, f, h, w),
            use_gradient_checkpointing, use_gradient_checkpointing_offload,
            x, context, t_mod, freqs, action_emb)  # (B, L, D)
    x = dit.head(x, t)  # (B, L, C * prod(patch))
    return dit.unpatchify(x, (f, h, w))  # (B, C, F, H, W)
