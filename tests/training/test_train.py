"""python -m training.train end to end on the tiny preset: layout, inference, LoRA + merge, flag errors, --help."""
import csv
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from models.action_format import MAGNITUDE_SCALE, constant_actions
from models.controller import ACTION_CONTROLLER_CONFIGS, resolve_controller_config
from models.tiny import build_tiny_pipeline
from training.data.synthetic import make_dataset
from training.train import main
from training.trainer import checkpoint as ckpt
from training.trainer import forcing as forcing_lib
from training.trainer import module as module_lib
from training.trainer.config import TrainConfig, build_parser
from training.trainer.lora_merge import merge_lora_state
from training.trainer.module import build_controller


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    out = tmp_path_factory.mktemp("flights")
    make_dataset(out, clips=3, frames=9, height=64, width=64, seed=1)
    return str(out)


def argv(data, out, *extra):
    return ["--preset", "tiny", "--dataset_base_path", data, "--num_frames", "9", "--height", "64", "--width", "64",
            "--learning_rate", "1e-3", "--output_path", str(out), *extra]


BAD_FLAGS = [
    (["--num_frames", "10"], "--num_frames"),
    (["--height", "60"], "--height"),
    (["--lr_min_lr", "1"], "--lr_min_lr"),
    (["--lr_warmup_ratio", "1.5"], "--lr_warmup_ratio"),
    (["--max_steps", "0"], "--max_steps"),
    (["--max_checkpoints", "2"], "--max_checkpoints"),
    (["--save_full_state"], "--save_full_state"),
    (["--trainable_models", "dit"], "--trainable_models"),
    (["--model_dir", "."], "--preset"),
    (["--action_controller_config", "wan_ti2v_5b"], "--action_controller_config"),
    (["--lora_checkpoint", "x.safetensors"], "--lora_checkpoint"),
    (["--min_timestep_boundary", "0.9", "--max_timestep_boundary", "0.5"], "--min_timestep_boundary"),
    (["--resume_from", "/nonexistent/step-000000001"], "--resume_from"),
    (["--num_frames", "85"], "--num_frames"),  # 21 actions > the controller's 20 (found when building it)
    (["--causal", "--block_frames", "0"], "--block_frames"),
    (["--causal", "--window", "-1"], "--window"),
    (["--causal", "--teacher_forcing", "1.5"], "--teacher_forcing"),
    (["--causal", "--error_buffer", "0"], "--error_buffer"),
    (["--causal", "--motion_weight", "-1"], "--motion_weight"),
    (["--causal", "--rollout", "1.5"], "--rollout"),
    (["--causal", "--rollout_steps", "0"], "--rollout_steps"),
    (["--causal", "--rollout_guidance", "0.5"], "--rollout_guidance"),
    (["--action_lookahead"], "--action_lookahead"),  # needs --causal
    (["--action_joint_previous"], "--action_joint_previous"),
    (["--causal", "--window", "0", "--action_joint_previous"], "--window"),
    (["--action_spatial_tmod", "--action_injection_type", "cross_attn_frame"], "--action_spatial_tmod"),
    (["--action_spatial_tmod"], "--action_spatial_tmod"),  # the tiny preset's type is cross_attn_frame
]


def test_short_run_writes_the_layout_and_generates(flights, tmp_path, gen_kwargs):
    out = tmp_path / "run"
    assert main(argv(flights, out, "--max_steps", "3", "--save_steps", "2", "--save_full_state",
                     "--log_steps", "1", "--lr_warmup_ratio", "0.3")) == 0
    assert sorted(os.listdir(out)) == ["action_controller.safetensors", "action_train_config.json", "checkpoints"]
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000000002", "step-000000003"]
    for step in ("step-000000002", "step-000000003"):
        assert sorted(os.listdir(out / "checkpoints" / step)) == sorted(ckpt.CHECKPOINT_FILES)

    config = json.loads((out / "action_train_config.json").read_text())
    assert config["action_controller_config"] == ACTION_CONTROLLER_CONFIGS["tiny"]
    assert config["action_magnitude_scale"] == list(MAGNITUDE_SCALE)
    assert config["lora"]["lora_base_model"] is None
    assert config["training"]["status"] == "finished" and config["training"]["step"] == 3
    with open(os.path.join(flights, "metadata.csv"), newline="") as handle:
        rows = [json.loads(row["action"]) for row in csv.DictReader(handle)]
    forward_active = sum(r[t][0][0] for r in rows for t in range(2)) / (len(rows) * 2)
    assert config["action_stats"]["actions"]["Forward"]["fraction_active"] == pytest.approx(forward_active)

    # Written after training from the trained weights: equal to the last checkpoint, not to the initial controller.
    trained = load_file(out / "action_controller.safetensors")
    last = load_file(out / "checkpoints" / "step-000000003" / ckpt.TRAINABLE_NAME)
    assert trained.keys() == last.keys() and all(torch.equal(trained[k], last[k]) for k in trained)
    initial = build_controller(resolve_controller_config("tiny"), seed=0).state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)

    pipe = build_tiny_pipeline(0)
    pipe.load_action_artifacts(str(out))
    assert pipe.action_stats == config["action_stats"]
    video = pipe(actions=constant_actions(2, {"Forward": 0.01}), **gen_kwargs)
    assert video.shape == (1, 3, 9, 64, 64) and torch.isfinite(video).all()


def test_lora_run_loads_for_inference_and_merges_to_base_plus_lora(flights, tmp_path):
    from diffsynth.diffusion.training_module import DiffusionTrainingModule
    from diffsynth.pipelines.wan_video import model_fn_wan_video


    out = tmp_path / "lora_run"
    assert main(argv(flights, out, "--max_steps", "2", "--lora_base_model", "dit", "--lora_rank", "4",
                     "--lora_target_modules", "q,v,ffn.0")) == 0
    assert sorted(os.listdir(out)) == ["action_controller.safetensors", "action_train_config.json",
                                       "lora.safetensors"]
    lora = load_file(out / "lora.safetensors")
    targets = [n for n, _ in build_tiny_pipeline(0).dit.named_modules() if n.split(".")[-1] in ("q", "v")
               or n.endswith(".ffn.0")]  # peft matches name suffixes: self- and cross-attention q/v
    assert len(lora) == 2 * len(targets) == 2 * 2 * 5
    assert "blocks.0.self_attn.q.lora_A.default.weight" in lora
    assert any(k.endswith("lora_B.default.weight") and v.abs().max() > 0 for k, v in lora.items())  # trained

    fused = build_tiny_pipeline(0)
    fused.load_action_artifacts(str(out))  # fuses the LoRA into fused.dit
    merged = build_tiny_pipeline(0).dit
    merged.load_state_dict(merge_lora_state(merged.state_dict(), lora))
    peft_dit = DiffusionTrainingModule().add_lora_to_model(build_tiny_pipeline(0).dit, ["q", "v", "ffn.0"], 4)
    result = peft_dit.load_state_dict(lora, strict=False)
    assert not result.unexpected_keys

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 48, 3, 4, 4, generator=generator)
    context = torch.randn(1, 8, 32, generator=generator)
    timestep = torch.tensor([500.0])
    outputs = [model_fn_wan_video(dit=dit, latents=latents, timestep=timestep, context=context,
                                  fuse_vae_embedding_in_latents=True) for dit in (peft_dit, merged, fused.dit)]
    assert torch.allclose(outputs[1], outputs[0], atol=1e-5)
    assert torch.allclose(outputs[2], outputs[1], atol=1e-6)
    base = model_fn_wan_video(dit=build_tiny_pipeline(0).dit, latents=latents, timestep=timestep, context=context,
                              fuse_vae_embedding_in_latents=True)
    assert not torch.allclose(base, outputs[0], atol=1e-5)  # the LoRA did change the model


@pytest.mark.parametrize("extra,flag", BAD_FLAGS, ids=[f for _, f in BAD_FLAGS])
def test_bad_flags_give_one_clear_line(flights, tmp_path, capsys, extra, flag):
    assert main(argv(flights, tmp_path / "out", "--max_steps", "1", *extra)) == 2
    err = capsys.readouterr().err
    assert f"error: {flag}:" in err and "Traceback" not in err


def test_missing_dataset_and_model_are_named(tmp_path, capsys):
    assert main(["--dataset_base_path", str(tmp_path / "nope"), "--preset", "tiny"]) == 2
    assert "--dataset_base_path" in capsys.readouterr().err
    assert main(["--dataset_base_path", str(tmp_path)]) == 2
    assert "--model_dir" in capsys.readouterr().err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name}" in text, name
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert len(actions) == len(TrainConfig.__dataclass_fields__)
    assert all(a.help for a in actions)
    seed_flags = ["dataset_base_path", "dataset_metadata_path", "data_file_keys", "dataset_num_workers", "model_dir",
                  "trainable_models", "action_controller_config", "action_injection_type", "action_initial_scale",
                  "learning_rate", "lr_warmup_ratio", "lr_min_lr", "weight_decay", "max_steps", "log_steps",
                  "save_steps", "use_wandb", "wandb_project", "wandb_run_name", "gradient_accumulation_steps",
                  "height", "width", "num_frames", "output_path", "model_id_with_origin_paths"]
    assert all(name in TrainConfig.__dataclass_fields__ for name in seed_flags)


def test_causal_run_trains_block_causally_and_records_how_it_generates(flights, tmp_path, monkeypatch):
    """--causal: the loss goes through the block-causal forward (a sink + window clip), and the artifacts say how
    the controller generates, so a server opens streams for it."""
    seen = []
    real = module_lib.causal_loss

    def spy(dit, controller, scheduler, latents, *args, **kwargs):
        seen.append(tuple(latents.shape))
        return real(dit, controller, scheduler, latents, *args, **kwargs)
    monkeypatch.setattr(module_lib, "causal_loss", spy)
    out = tmp_path / "causal"
    assert main(argv(flights, out, "--max_steps", "2", "--causal", "--window", "1", "--error_prob", "0.5",
                     "--action_lookahead", "--action_injection_type", "adaln_tmod", "--action_spatial_tmod")) == 0
    assert seen == [(1, 48, 3, 4, 4)] * 2  # 3 latent frames: the sink + the window of 1 + a block of 1
    config = json.loads((out / "action_train_config.json").read_text())
    assert config["action_controller_config"]["lookahead"] is True
    assert config["action_controller_config"]["spatial_tmod"] is True
    assert config["generation"] == {"generation": "causal", "block_frames": 1, "window": 1, "sink": True}
    assert config["training"]["config"]["causal"] is True


def test_a_causal_run_with_rollouts_trains_on_context_the_model_generated(flights, tmp_path, monkeypatch):
    """--rollout 1: every step's context block is rolled out (here through a lookahead controller, with guidance),
    and the run records the rollout settings."""
    samplers = []
    real = forcing_lib.own_context

    def spy(*args, **kwargs):
        samplers.append(args[7])
        return real(*args, **kwargs)
    monkeypatch.setattr(forcing_lib, "own_context", spy)
    out = tmp_path / "rollout"
    assert main(argv(flights, out, "--max_steps", "2", "--causal", "--window", "1", "--teacher_forcing", "1",
                     "--rollout", "1", "--rollout_steps", "2", "--rollout_guidance", "2", "--action_lookahead",
                     "--action_injection_type", "adaln_tmod")) == 0
    assert [(s.steps, s.guidance) for s in samplers] == [(2, 2.0)] * 2
    assert json.loads((out / "action_train_config.json").read_text())["training"]["config"]["rollout"] == 1.0
