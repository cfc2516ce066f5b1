"""``python -m training.toyworld --out DIR [--minutes N --seed S ...]``

Trains the toy world, a small model of the real Wan2.2-TI2V architecture, from scratch on the project's synthetic
flights (``training.smallworld.recipe``; docs/toyworld.md). A rerun with the same DIR resumes.
"""
from __future__ import annotations

import argparse
import json
import logging

import torch

from models.action_format import num_actions_for_frames
from training.smallworld.recipe import ToyRun, causal_settings, controller_config, forcing_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.toyworld", description=__doc__.split("\n\n")[1])
    p.add_argument("--out", required=True, help="output folder (world files, checkpoints, data cache)")
    p.add_argument("--minutes", type=float, default=30.0, help="time budget that sizes the two stages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--frames", type=int, default=None, help="4k+1 frames per rendered clip (default: 5 for a "
                   "chunked world; 33 for a causal one, whose DiT trains on the sink + window clips taken from them)")
    p.add_argument("--generation", choices=["causal", "chunked"], default="chunked",
                   help="chunked: chunk after chunk; causal (worlds/toy): one block-causal stream per flight")
    p.add_argument("--block_frames", type=int, default=1, help="causal: latent frames per block")
    p.add_argument("--window", type=int, default=3, help="causal: latent frames of context besides the sink")
    p.add_argument("--no_sink", dest="sink", action="store_false", help="causal: no first-image sink")
    p.add_argument("--teacher_forcing", type=float, default=0.5,
                   help="causal: share of clips trained as clean context + one noised block (else diffusion forcing)")
    p.add_argument("--context_noise", type=float, default=0.1, help="causal: max noise level of context frames")
    p.add_argument("--error_prob", type=float, default=0.5, help="causal: chance a context frame carries a stored "
                   "prediction residual (0 = no error buffer)")
    p.add_argument("--error_buffer", type=int, default=256, help="causal: prediction residuals kept")
    p.add_argument("--first_window", type=float, default=0.25,
                   help="causal: share of training windows right after the sink (the stream's first blocks)")
    p.add_argument("--action_change", type=float, default=0.5,
                   help="causal: share of training windows whose last block starts where the action changes")
    p.add_argument("--dit_motion_weight", type=float, default=0.0, help="causal: extra DiT loss weight where the "
                   "true clip moves from frame to frame (training.trainer.forcing)")
    p.add_argument("--rollout", type=float, default=0.0, help="causal: share of batches whose context blocks are the "
                   "DiT's own generation with the --serve_* sampler (training.trainer.own_context)")
    p.add_argument("--lookahead", action="store_true", help="causal: context frames also see the next action")
    p.add_argument("--spatial_tmod", action="store_true", help="adaln_tmod: action deltas vary across the image")
    p.add_argument("--joint_previous", action="store_true",
                   help="causal: each block is denoised with a clean copy of the frame before it, attending both "
                        "ways (as a chunked world's first image); the controller's joint_previous")
    p.add_argument("--init_dit", default=None,
                   help="start the DiT and the action controller from this world folder (e.g. the chunked "
                        "worlds/toy: it knows the stream's first block, image + action -> next frame)")
    p.add_argument("--init_vae", default=None,
                   help="start from this world folder's VAE (e.g. worlds/toy) and skip the VAE stage, or, with "
                        "--vae_steps N, fine-tune it N steps (e.g. on longer --vae_frames windows)")
    p.add_argument("--speed", type=float, default=5.0,
                   help="multiplies the synthetic flights' translation and rotation ranges")
    p.add_argument("--move_speed", type=float, default=None,
                   help="multiplies the translation ranges instead of --speed (default: --speed)")
    p.add_argument("--clips", type=int, default=None,
                   help="rendered training clips (default: 1280 for a chunked world; 1024 for a causal one, whose "
                        "clips are 33 frames: 1.7 GB of data in memory)")
    p.add_argument("--holdout", type=int, default=32)
    p.add_argument("--vae_dim", type=int, default=8)
    p.add_argument("--dim", type=int, default=192, help="DiT width (head_dim // 3 must be even)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dit_patch", type=int, default=2, choices=[1, 2], help="latent cells per DiT token side")
    p.add_argument("--controller_scale", type=float, default=1.0, help="initial output_scale of the controller")
    p.add_argument("--injection_type", default="adaln_tmod",
                   choices=["cross_attn_frame", "cross_attn_window", "adaln_tmod", "add_residual"],
                   help="how the controller enters the DiT (models.controller)")
    p.add_argument("--vae_steps", type=int, default=None)
    p.add_argument("--dit_steps", type=int, default=None)
    p.add_argument("--vae_batch", type=int, default=2)
    p.add_argument("--vae_frames", type=int, default=5, help="frames per VAE training window (1+4k)")
    p.add_argument("--batch", type=int, default=16, help="DiT batch")
    p.add_argument("--cond_noise", type=float, default=0.0, help="max std of the noise on the first frame's latent")
    p.add_argument("--vae_lr", type=float, default=1e-3)
    p.add_argument("--vae_motion_weight", type=float, default=1.0,
                   help="weight of the L1 loss on frame-to-frame differences (VAE and decoder stages)")
    p.add_argument("--vae_thumbnail_weight", type=float, default=0.0,
                   help="weight of the MSE pulling the VAE's latents to the frames' 8x8-pixel means (0 = off)")
    p.add_argument("--latents", choices=["vae", "thumbnail"], default="vae", help="the latent space: the VAE "
                   "encoder's, or the frames' thumbnail code (which it learns)")
    p.add_argument("--dit_lr", type=float, default=1e-3)
    p.add_argument("--decoder_steps", type=int, default=300, help="decoder-only fine-tuning steps after the DiT")
    p.add_argument("--decoder_lr", type=float, default=5e-4)
    p.add_argument("--decoder_frames", type=int, default=17, help="frames per decoder-stage window (1+4k)")
    p.add_argument("--save_steps", type=int, default=100)
    p.add_argument("--serve_steps", type=int, default=4, help="denoising steps the server uses (serve.json)")
    p.add_argument("--serve_fps", type=int, default=8, help="playback fps the server uses (serve.json)")
    p.add_argument("--serve_guidance", type=float, default=3.0,
                   help="action guidance the server uses (serve.json; >= 1, 1 = off; see models.pipeline)")
    p.add_argument("--serve_guidance_rescale", type=float, default=0.7,
                   help="action guidance rescale the server uses (serve.json; 0..1, 0 = off; see models.model_fn)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no_progress", dest="progress", action="store_false")
    p.add_argument("--export_only", action="store_true",
                   help="write the world from DIR's latest checkpoint as it is (no further training)")
    return p


CAUSAL_ONLY = ("block_frames", "window", "sink", "teacher_forcing", "context_noise", "error_prob", "error_buffer",
               "first_window", "action_change", "dit_motion_weight", "rollout", "lookahead", "joint_previous")


def fill_generation_defaults(a: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on --generation: clip length and count."""
    causal = a.generation == "causal"
    a.frames = (33 if causal else 5) if a.frames is None else a.frames
    a.clips = (1024 if causal else 1280) if a.clips is None else a.clips
    return a


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = build_parser()
    a = parser.parse_args(argv)
    if not a.serve_guidance >= 1:  # NaN too
        parser.error(f"--serve_guidance must be >= 1 (1 = off), got {a.serve_guidance}")
    if not 0 <= a.serve_guidance_rescale <= 1:  # NaN too
        parser.error(f"--serve_guidance_rescale must be in [0, 1] (0 = off), got {a.serve_guidance_rescale}")
    for name in ("cond_noise", "vae_motion_weight", "vae_thumbnail_weight", "dit_motion_weight"):
        if not getattr(a, name) >= 0:  # NaN too
            parser.error(f"--{name} must be >= 0, got {getattr(a, name)}")
    if a.latents == "thumbnail" and a.vae_thumbnail_weight:
        parser.error("--vae_thumbnail_weight pulls latents to the code, --latents thumbnail is it: give one of them")
    if a.generation != "causal":  # a chunked recipe would ignore them: say so rather than train without them
        given = [name for name in CAUSAL_ONLY if getattr(a, name) != parser.get_default(name)]
        if given:
            parser.error(f"--{given[0]} applies to --generation causal only (this recipe is {a.generation})")
    if a.joint_previous and a.window < 1:
        parser.error("--joint_previous needs --window >= 1 (the frame before a block must be in its context)")
    if a.threads:
        torch.set_num_threads(a.threads)
    fill_generation_defaults(a)
    try:
        num_actions_for_frames(a.frames)
        causal_settings(a), forcing_config(a), controller_config(a)  # checked by name before any work
    except ValueError as error:
        parser.error(str(error))
    report = ToyRun(a).run()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
