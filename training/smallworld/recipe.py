"""The toy-world recipe (``python -m training.toyworld --out DIR [--minutes N --seed S]``).

A small model of the real Wan2.2-TI2V architecture trained from scratch on the project's synthetic flights
(``training.data.synthetic``), small enough for 2 CPU cores and to ship in ``worlds/toy/``:
    0. render ``--clips`` random flights (+ ``--holdout`` held-out ones) at HxW, ``--frames`` frames (cached in DIR)
    1. train the ``VideoVAE38_`` (width ``--vae_dim``, z_dim 48) for reconstruction (``smallworld.stages.VaeStage``)
    2. encode the clips, then train the TI2V ``WanModel`` + action controller with the flow-matching loss through
       ``pipe.model_fn`` (``smallworld.stages.DitStage``); the tiny text encoder (vocabulary = base words + the
       synthetic prompts' words) is built deterministically from the seed and kept frozen
    3. write a small-world folder (``models.small_world.save_small_world`` + ``models.artifacts``)
       + ``serve.json`` + ``toyworld_report.json`` (losses, PSNR, timings) into DIR.
Both stages run the training package's loop (``training.trainer.loop.Trainer``) with its warmup-cosine schedule; a
checkpoint (weights, optimizer, scheduler, RNG, plan) is written atomically every ``--save_steps`` and at each stage
end to DIR/checkpoints/toyworld_state.pt, and a rerun with the same DIR resumes from it.
    2b. optionally (``--decoder_steps``) fine-tune the VAE decoder alone: sharper frames in the same latent space
Step counts: ``--vae_steps/--dit_steps`` when given; otherwise ``--minutes`` is split 40/50 between the stages by
timing a few steps at start. The plan is stored in the checkpoint, so a resumed run finishes the same plan; given
the step counts, a run is deterministic per seed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time

import numpy as np
import torch

from models.action_format import num_actions_for_frames, split_actions
from models.artifacts import ArtifactConfig, load_controller, save_action_artifacts
from models.controller import ActionControllerConfig
from models.options import CausalSettings
from models.serve_config import ServeConfig, save_serve_config
from models.small_world import (
    BASE_VOCAB,
    SmallWorldConfig,
    build_world_pipeline,
    load_world_weights,
    prompt_words,
    save_small_world,
)
from training.data.action_stats import compute_action_stats
from training.data.synthetic import render_random_flight
from training.smallworld.samples import sample_scene
from training.smallworld.stages import (
    CausalDitStage,
    DecoderStage,
    DitStage,
    StepBatches,
    VaeStage,
    batch_indices,
    encode_clips,
    reconstruction_psnr,
    to_video_tensor,
)
from training.trainer.checkpoint import capture_rng_state, restore_rng_state, torch_save_atomic, write_json_atomic
from training.trainer.forcing import ForcingConfig, first_blocks, sample_window
from training.trainer.loop import LoopCallbacks, LoopSettings, LoopState, Trainer
from training.trainer.loss_probe import true_vs_shuffled
from training.trainer.schedule import build_scheduler

logger = logging.getLogger("training.toyworld")
STATE_FILE = os.path.join("checkpoints", "toyworld_state.pt")
LATENTS_FILE = os.path.join("checkpoints", "toyworld_latents.pt")
DATA_FILE = "toyworld_data.npz"
DEFAULT_PROMPT = "a drone flies over a green meadow with tall pillars at noon"
SERVE_SAMPLE_INDEX = 2  # the demo opens on web/samples/synthetic-3.png (a desert: the most contrast), its prompt
SERVE_SAMPLE = f"synthetic-{SERVE_SAMPLE_INDEX + 1}"  # written by ``python -m training.toyworld_samples``


# ---- data ----------------------------------------------------------------------------------------------------
def render_clips(seed: int, start: int, count: int, frames: int, height: int, width: int, progress: bool = True,
                 speed: float = 1.0, move_speed: float | None = None):
    """Clips ``start..start+count`` of the synthetic dataset of ``seed`` (``render_random_flight``, the dataset's
    clips without mp4): frames uint8 (count, F, H, W, 3), flown actions (count, T, 2, 8), prompts."""
    from tqdm import tqdm

    videos, actions, prompts = [], [], []
    for index in tqdm(range(start, start + count), desc="render", unit="clip", disable=not progress):
        video, _, flown, prompt = render_random_flight(seed, index, frames, height, width, speed=speed,
                                                       move_speed=move_speed)
        videos.append(video)
        actions.append(flown.astype(np.float32))
        prompts.append(prompt)
    return np.stack(videos), np.stack(actions), prompts


def load_or_render(out: str, a) -> dict:
    path = os.path.join(out, DATA_FILE)
    key = [a.seed, a.clips, a.holdout, a.frames, a.height, a.width, a.speed]
    key = json.dumps(key if a.move_speed is None else key + [a.move_speed])  # the committed world's key is unchanged
    if os.path.isfile(path):
        data = np.load(path, allow_pickle=False)
        if str(data["key"]) == key:
            return {name: data[name] for name in data.files}
    train = render_clips(a.seed, 0, a.clips, a.frames, a.height, a.width, a.progress, a.speed, a.move_speed)
    held = render_clips(a.seed, 10 ** 6, a.holdout, a.frames, a.height, a.width, a.progress, a.speed, a.move_speed)
    data = {"frames": train[0], "actions": train[1], "prompts": np.array(train[2]), "held_frames": held[0],
            "held_actions": held[1], "held_prompts": np.array(held[2]), "key": np.array(key)}
    tmp = path + ".tmp.npz"
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data


# ---- model ---------------------------------------------------------------------------------------------------
def world_config(a, prompts):
    vocab = sorted(set(BASE_VOCAB) | set(prompt_words(list(prompts) + [DEFAULT_PROMPT])))
    return SmallWorldConfig(dim=a.dim, num_heads=a.heads, num_layers=a.layers, ffn_dim=4 * a.dim, text_dim=32,
                            text_heads=2, text_layers=2, text_ffn_dim=64, text_seq_len=32, vae_dim=a.vae_dim,
                            vae_dec_dim=a.vae_dim, patch=a.dit_patch, vocab=vocab)


def controller_config(a) -> dict:
    return ActionControllerConfig(hidden_size=a.dim, num_heads=a.heads, num_layers=a.layers,
                                  num_latent_frames=max(20, num_actions_for_frames(a.frames)),
                                  window_head_dim=16, initial_scale=a.controller_scale,
                                  injection_type=a.injection_type, lookahead=a.lookahead,
                                  joint_previous=a.joint_previous, spatial_tmod=a.spatial_tmod).to_dict()


def causal_settings(a) -> CausalSettings | None:
    """The block/window settings of a causal recipe (``--generation causal``), else None."""
    if a.generation != "causal":
        return None
    return CausalSettings(block_frames=a.block_frames, window=a.window, sink=a.sink)


def forcing_config(a) -> ForcingConfig:
    sampler = {"rollout_steps": a.serve_steps, "rollout_guidance": a.serve_guidance,
               "rollout_rescale": a.serve_guidance_rescale} if a.rollout else {}  # a rollout samples as served
    return ForcingConfig(teacher_forcing=a.teacher_forcing, context_noise=a.context_noise, error_prob=a.error_prob,
                         error_buffer=a.error_buffer, first_window=a.first_window, action_change=a.action_change,
                         motion_weight=a.dit_motion_weight, rollout=a.rollout, **sampler)


def build_models(a, config):
    """(pipe, controller), deterministic per seed (independent of the global RNG)."""
    pipe = build_world_pipeline(config, a.seed, controller_config=controller_config(a))
    return pipe, pipe.action_controller


@torch.no_grad()
def encode_prompts(pipe, prompts) -> dict:
    from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder
    unit = WanVideoUnit_PromptEmbedder()
    return {p: unit.process(pipe, p, True)["context"] for p in sorted(set(prompts))}


# ---- the run -------------------------------------------------------------------------------------------------
class ToyRun:
    def __init__(self, a):
        from accelerate import Accelerator
        self.a, self.out = a, a.out
        os.makedirs(os.path.join(self.out, "checkpoints"), exist_ok=True)
        torch.manual_seed(a.seed)
        np.random.seed(a.seed)
        self.accelerator = Accelerator(cpu=True)
        self.data = load_or_render(self.out, a)
        self.config = world_config(a, list(self.data["prompts"]) + list(self.data["held_prompts"]))
        self.pipe, self.controller = build_models(a, self.config)
        self.causal, self.forcing = causal_settings(a), forcing_config(a)
        if a.init_vae:  # start from a world's trained VAE; the VAE stage is skipped unless --vae_steps is given
            try:
                self.pipe.vae.model.load_state_dict(load_world_weights(a.init_vae, "vae"))
            except RuntimeError as error:
                raise ValueError(f"--init_vae {a.init_vae}: its VAE does not fit --vae_dim {a.vae_dim} "
                                 f"({str(error).splitlines()[0]})") from None
        if a.init_dit:  # a chunked world has learned the stream's first block: image + action -> next frame
            self.init_dit_from(a.init_dit)
        self.state = {"stage": "vae", "step": 0, "plan": None, "losses": {"vae": [], "dit": [], "decoder": []},
                      "times": {}}
        self.resume_from = None
        path = os.path.join(self.out, STATE_FILE)
        if os.path.isfile(path):
            self.resume_from = torch.load(path, map_location="cpu", weights_only=False)
            self.state = self.resume_from["state"]
            self.pipe.vae.model.load_state_dict(self.resume_from["vae"])
            self.pipe.dit.load_state_dict(self.resume_from["dit"])
            self.controller.load_state_dict(self.resume_from["controller"])
            logger.info("resuming at stage %s step %d", self.state["stage"], self.state["step"])

    def init_dit_from(self, folder: str) -> None:
        """The DiT, its text encoder and the action controller of a world folder of the same architecture and
        vocabulary (--init_dit)."""
        parts = (("DiT", self.pipe.dit, lambda: load_world_weights(folder, "dit"),
                  "--dim/--heads/--layers/--dit_patch"),
                 ("text encoder", self.pipe.text_encoder, lambda: load_world_weights(folder, "text_encoder"),
                  "the vocabulary of the prompts (render the same scenes: --seed, --clips)"),
                 ("action controller", self.controller,  # a --lookahead recipe keeps its zero-init lookahead
                  lambda: self.controller.with_own_additions(load_controller(folder)[0].state_dict()),
                  "--dim/--heads/--layers/--injection_type"))
        for name, module, weights, hint in parts:
            try:
                module.load_state_dict(weights())
            except RuntimeError as error:
                raise ValueError(f"--init_dit {folder}: its {name} does not fit this recipe ({hint}): "
                                 f"{str(error).splitlines()[0]}") from None

    # ---- plan ----
    def plan(self, vae_stage, dit_stage) -> dict:
        a = self.a
        if self.state["plan"]:
            self.state["plan"].setdefault("decoder_steps", a.decoder_steps)  # checkpoints from before that stage
            self.state["losses"].setdefault("decoder", [])
            return self.state["plan"]
        vae_steps = (a.vae_steps or 0) if a.init_vae else a.vae_steps  # --init_vae: skipped unless steps are given
        plan = {"vae_steps": vae_steps, "dit_steps": a.dit_steps,
                "decoder_steps": a.decoder_steps}
        if plan["vae_steps"] is None or plan["dit_steps"] is None:
            budget = a.minutes * 60.0
            with torch.random.fork_rng(devices=[]):
                t_vae = self._time_step(vae_stage, self._vae_batch(0))
                latents = torch.randn(a.batch, 48, num_actions_for_frames(a.frames) + 1, a.height // 16,
                                      a.width // 16)  # (B, C, F, h, w)
                t_dit = self._time_step(dit_stage, self._dit_batch(0, latents))
            plan["vae_steps"] = plan["vae_steps"] if plan["vae_steps"] is not None else \
                max(10, int(0.40 * budget / t_vae))
            plan["dit_steps"] = plan["dit_steps"] or max(10, int(0.50 * budget / t_dit))
            plan["timed_step_s"] = {"vae": t_vae, "dit": t_dit}
        logger.info("plan: %s", plan)
        self.state["plan"] = plan
        return plan

    @staticmethod
    def _time_step(module, batch, repeats: int = 2) -> float:
        module(batch).backward()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            module(batch).backward()
        module.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / repeats

    # ---- batches ----
    def _vae_batch(self, step, stage: int = 1):
        """Stage 1 (VAE): windows of --vae_frames (1+4k) frames at random 4-frame offsets (the causal VAE's cost is
        per frame). Stage 4 (decoder): windows of --decoder_frames (whole chunk-length clips), so the decoder also
        learns later latent frames, which it decodes with the cache of the earlier ones exactly as in serving."""
        frames = self.data["frames"]
        idx = batch_indices(self.a.seed, stage, step, len(frames), self.a.vae_batch)
        span = min(self.a.vae_frames if stage == 1 else self.a.decoder_frames, frames.shape[1])
        offsets = np.random.default_rng([self.a.seed, 3 if stage == 1 else 5, step])
        starts = 4 * offsets.integers(0, (frames.shape[1] - span) // 4 + 1, len(idx))
        return to_video_tensor(np.stack([frames[i, s:s + span] for i, s in zip(idx, starts)]))

    def _dit_batch(self, step, latents):
        """Clips of the step; a causal recipe takes from each flight the sink + a window at a random place."""
        idx = batch_indices(self.a.seed, 2, step, len(latents), self.a.batch)
        prompts = self.data["prompts"] if len(latents) == len(self.data["prompts"]) else self.data["held_prompts"]
        context = torch.cat([self.contexts[str(prompts[i])] for i in idx])
        actions = self.data["actions"] if len(latents) == len(self.data["actions"]) else self.data["held_actions"]
        binary, magnitude = split_actions(torch.from_numpy(actions[idx]))  # (B, T, 8) each
        if self.causal is None:
            return latents[idx], context, binary, magnitude
        rng = random.Random(self.a.seed * 1_000_003 + step)  # a pure function of the step: resumable
        if rng.random() < self.forcing.first_window:  # the batch trains one of a stream's first blocks
            clips = [first_blocks(latents[idx], binary, magnitude, self.causal, rng)]
        else:  # each clip its own window deep in the flight
            clips = [sample_window(latents[i:i + 1], binary[k:k + 1], magnitude[k:k + 1], self.causal, rng, 0.0,
                                   self.forcing.action_change) for k, i in enumerate(idx)]
        return (torch.cat([c.latents for c in clips]), context, torch.cat([c.binary for c in clips]),
                torch.cat([c.magnitude for c in clips]),
                torch.tensor([c.adjacent for c in clips for _ in range(len(c.latents))]),
                torch.cat([c.ahead_binary for c in clips]), torch.cat([c.ahead_magnitude for c in clips]))

    # ---- one stage on the shared loop ----
    def run_stage(self, name: str, module, make_batch, total: int, lr: float):
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0 if name in ("vae", "decoder") else 0.01,
                                      betas=(0.9, 0.99))
        scheduler = build_scheduler(optimizer, total, warmup_ratio=0.05, base_lr=lr, min_lr=lr * 0.05)
        start = self.state["step"] if self.state["stage"] == name else 0
        if self.resume_from is not None and self.state["stage"] == name:
            if "optimizer" in self.resume_from:
                optimizer.load_state_dict(self.resume_from["optimizer"])
                scheduler.load_state_dict(self.resume_from["scheduler"])
            restore_rng_state(self.resume_from["rng"])
        loop_state = LoopState(step=start, samples=start)
        earlier = self.state["times"].get(name, 0.0) if start else 0.0  # time spent before an interruption
        began = time.perf_counter()

        def save(step):
            self.state.update(stage=name, step=step)
            self.state["times"][name] = earlier + time.perf_counter() - began  # so a resumed report counts it
            self.state["losses"][name] = self.state["losses"][name][:start] + loop_state.losses
            self.save_state(optimizer, scheduler)

        def log(metrics):
            logger.info("%s %s", name, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                if isinstance(v, float)))

        settings = LoopSettings(max_steps=total, max_grad_norm=1.0, log_steps=max(1, total // 10),
                                save_steps=self.a.save_steps, progress_bar=self.a.progress)
        trainer = Trainer(self.accelerator, module, optimizer, scheduler, StepBatches(make_batch, start), settings,
                          loop_state, LoopCallbacks(on_log=log, on_save=save))
        trainer.run()
        self.state["times"][name] = earlier + time.perf_counter() - began
        self.state["losses"][name] = self.state["losses"][name][:start] + loop_state.losses
        self.resume_from = None

    def save_state(self, optimizer=None, scheduler=None):
        blob = {"state": self.state, "vae": self.pipe.vae.model.state_dict(), "dit": self.pipe.dit.state_dict(),
                "controller": self.controller.state_dict(), "rng": capture_rng_state()}
        errors = getattr(getattr(self, "dit_stage", None), "errors", None)
        if errors is not None:  # the causal stage's recent residuals: a resumed run continues with them
            blob["error_buffer"] = {"items": errors.items, "next": errors.next}
        if optimizer is not None:
            blob.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        torch_save_atomic(os.path.join(self.out, STATE_FILE), blob)

    # ---- everything ----
    def run(self) -> dict:
        a = self.a
        code = a.latents == "thumbnail"
        vae_stage = VaeStage(self.pipe.vae, a.vae_motion_weight, a.vae_thumbnail_weight, code_latents=code)
        self.contexts = encode_prompts(self.pipe, list(self.data["prompts"]) + list(self.data["held_prompts"]))
        dit_stage = DitStage(self.pipe, self.controller, a.cond_noise) if self.causal is None else \
            CausalDitStage(self.pipe, self.controller, self.causal, self.forcing)
        self.dit_stage = dit_stage
        if self.resume_from is not None and "error_buffer" in self.resume_from:
            dit_stage.errors.items = self.resume_from["error_buffer"]["items"]
            dit_stage.errors.next = self.resume_from["error_buffer"]["next"]
        plan = self.plan(vae_stage, dit_stage)
        if self.state["stage"] == "vae" and not a.export_only:
            if plan["vae_steps"]:
                self.run_stage("vae", vae_stage, self._vae_batch, plan["vae_steps"], a.vae_lr)
            self.state.update(stage="dit", step=0)
            self.save_state()
        vae_stage.model.eval().requires_grad_(False)
        began = time.perf_counter()
        latents, held_latents = self.encoded(vae_stage)
        self.state["times"].setdefault("encode", time.perf_counter() - began)
        if self.state["stage"] == "dit" and not a.export_only:
            self.run_stage("dit", dit_stage, lambda s: self._dit_batch(s, latents), plan["dit_steps"], a.dit_lr)
            self.state.update(stage="decoder", step=0)
            self.save_state()
        if self.state["stage"] == "decoder" and not a.export_only:
            if plan["decoder_steps"]:
                self.run_stage("decoder", DecoderStage(self.pipe.vae, a.vae_motion_weight, code_latents=code),
                               lambda s: self._vae_batch(s, stage=4),
                               plan["decoder_steps"], a.decoder_lr)
                self.pipe.vae.model.eval().requires_grad_(False)
            self.state.update(stage="done", step=plan["dit_steps"])
            self.save_state()
        self.pipe.dit.eval().requires_grad_(False)
        self.controller.eval().requires_grad_(False)
        report = {"plan": plan, "trained_to": {"stage": self.state["stage"], "step": self.state["step"]},
                  "times_s": self.state["times"],
                  "vae_psnr_heldout_db": reconstruction_psnr(vae_stage, self.data["held_frames"]),
                  "latent_std": float(latents.std()), **self.heldout_losses(dit_stage, held_latents)}
        for name in ("vae", "dit", "decoder"):
            losses = self.state["losses"].get(name, [])
            report[f"{name}_loss_first10"] = float(np.mean(losses[:10])) if losses else None
            report[f"{name}_loss_last10pct"] = float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else None
        self.write_world(report)
        return report

    def encoded(self, vae_stage) -> tuple[torch.Tensor, torch.Tensor]:
        """The clips' latents with the trained encoder (or their thumbnail code, ``--latents thumbnail``), kept in
        DIR/checkpoints (encoding long flights takes minutes): reused while the encoder's weights (or the choice of
        the code) and the data are the same, else encoded again."""
        digest = hashlib.sha256(str(self.data["key"]).encode())
        if vae_stage.code_latents:
            digest.update(b"thumbnail code")
        else:
            for name, tensor in sorted(vae_stage.model.encoder.state_dict().items()):
                digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
        path = os.path.join(self.out, LATENTS_FILE)
        if os.path.isfile(path):
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["digest"] == digest.hexdigest():
                return cached["latents"], cached["held_latents"]
        latents = encode_clips(vae_stage, self.data["frames"], progress=self.a.progress)
        held_latents = encode_clips(vae_stage, self.data["held_frames"], progress=False)
        torch_save_atomic(path, {"digest": digest.hexdigest(), "latents": latents, "held_latents": held_latents})
        return latents, held_latents

    def heldout_losses(self, dit_stage, held_latents, draws: int = 8) -> dict:
        """Held-out flow-matching loss with the true actions vs another clip's (``training.trainer.loss_probe``)."""
        if len(held_latents) < 2:
            return {}
        contexts = [self.contexts[str(p)] for p in self.data["held_prompts"]]
        actions = torch.from_numpy(self.data["held_actions"])  # (N, T, 2, 8) raw
        if self.causal is not None:  # the flights' first window: clean context, the last block noised (a stream)
            frames = 1 + self.causal.window + self.causal.block_frames
            held_latents, actions = held_latents[:, :, :frames], actions[:, :frames - 1]
            probe_forcing = ForcingConfig(teacher_forcing=1.0, context_noise=0.0, error_prob=0.0)

            def loss(i, action):
                return dit_stage((held_latents[i:i + 1], contexts[i], *split_actions(action)), probe_forcing)
        else:
            def loss(i, action):
                return dit_stage((held_latents[i:i + 1], contexts[i], *split_actions(action)))

        cond_noise = getattr(dit_stage, "cond_noise", 0.0)
        dit_stage.cond_noise = 0.0  # clean first frames, as the suite generates
        try:
            probe = true_vs_shuffled(loss, actions, draws, seed=self.a.seed)
        finally:
            dit_stage.cond_noise = cond_noise
        return {"heldout_fm_loss_true_actions": probe["loss_true"],
                "heldout_fm_loss_shuffled_actions": probe["loss_shuffled"]}

    def write_world(self, report: dict) -> None:
        a = self.a
        recipe = {k: v for k, v in vars(a).items() if k not in ("out", "progress", "export_only")}
        save_small_world(self.out, self.pipe, self.config, extra={"recipe": recipe, "report": report})
        save_action_artifacts(self.out, self.controller, ArtifactConfig(
            action_controller_config={}, base_model_id="wanfly-toy-world",
            action_stats=compute_action_stats(list(self.data["actions"])), training={"recipe": recipe}))
        save_serve_config(self.out, ServeConfig(
            height=a.height, width=a.width,
            chunk_frames=a.frames if self.causal is None else 1 + 4 * self.causal.block_frames,
            fps=a.serve_fps, steps=a.serve_steps,
            cfg_scale=1.0, action_guidance=a.serve_guidance, action_guidance_rescale=a.serve_guidance_rescale,
            prompt=sample_scene(SERVE_SAMPLE_INDEX, a.height, a.width)[1],
            sample=SERVE_SAMPLE, autoregressive=self.causal is None,  # a chunked world knows chunk-length clips only
            generation=a.generation, **(self.causal.__dict__ if self.causal else {}),
            weights=f"toy world, the Wan2.2-TI2V architecture trained from scratch on synthetic flights "
                    f"({a.height}x{a.width}, " + (f"{a.frames}-frame chunks" if self.causal is None else
                                                  "one continuous block-causal stream") + "; docs/toyworld.md)",
            notes=f"This toy world ignores the prompt (its text encoder was never trained; the scene comes from the "
                  f"first frame). The picture is {a.height}x{a.width} and soft, {a.serve_fps} frames a second. Frame 0 "
                  f"is the world's own reconstruction of your image through its small VAE, not your image itself."))
        write_json_atomic(os.path.join(self.out, "toyworld_report.json"), report)
