"""training.trainer.run: full-state checkpoints, an exact resume, a killed write, rotation."""
import os

import pytest
import torch
from safetensors.torch import load_file

from training.data.synthetic import make_dataset
from training.train import run
from training.trainer import checkpoint as ckpt
from training.trainer import run as trainer_run
from training.trainer.config import ConfigError, parse_config, validate

K = 4  # steps of the straight run; the interrupted runs stop at K/2


class Killed(Exception):
    """Stands for SIGKILL: raised out of the training loop at a chosen moment."""


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    out = tmp_path_factory.mktemp("flights")
    make_dataset(out, clips=3, frames=9, height=32, width=32, seed=3)
    return str(out)


def config(data, out, *extra):
    # Warmup + cosine over K steps, accumulation 2 and clipping: everything the resume has to restore.
    return validate(parse_config([
        "--preset", "tiny", "--dataset_base_path", data, "--num_frames", "9", "--height", "32", "--width", "32",
        "--max_steps", str(K), "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3",
        "--lr_warmup_ratio", "0.25", "--lr_min_lr", "1e-5", "--max_grad_norm", "0.5", "--save_steps", "2",
        "--save_full_state", "--log_steps", "1", "--output_path", str(out), *extra]))


def controller_weights(out):
    return load_file(os.path.join(out, "action_controller.safetensors"))


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def straight(flights, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    summary = run(config(flights, out))
    assert summary["step"] == K and len(summary["losses"]) == K
    return out, summary


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One latent cache for the runs below (split training: ~10x faster steps than encoding every clip)."""
    return str(tmp_path_factory.mktemp("cache"))


def test_straight_run_checkpoints(straight):
    out, summary = straight
    steps = [step for step, _ in ckpt.list_checkpoints(os.path.join(out, "checkpoints"))]
    assert steps == [2, 4]
    state = ckpt.load_checkpoint(os.path.join(out, "checkpoints", "step-000000004"))
    assert state["trainer_state"]["samples"] == K * 2  # K steps x 2 micro-batches x 1 process
    assert state["scheduler"]["last_epoch"] == K
    assert len(state["rng_states"]) == 1
    # The final artifacts are the trained weights (the seed's script saved them before training).
    final = {k[len(ckpt.CONTROLLER_PREFIX):]: v for k, v in state["trainable_full"].items()}
    assert_identical(final, controller_weights(out))


def test_resume_is_bit_identical(straight, flights, tmp_path, monkeypatch):
    real_save = trainer_run.save_full_state

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        raise Killed(path)
    monkeypatch.setattr(trainer_run, "save_full_state", save_then_die)
    with pytest.raises(Killed):
        run(config(flights, tmp_path))  # killed right after the step-2 checkpoint
    monkeypatch.setattr(trainer_run, "save_full_state", real_save)
    summary = run(config(flights, tmp_path, "--resume_from", "latest"))
    assert summary["step"] == K and len(summary["losses"]) == K // 2  # only the second half ran
    assert summary["losses"] == straight[1]["losses"][K // 2:]
    assert_identical(controller_weights(straight[0]), controller_weights(tmp_path))
    ours = ckpt.load_checkpoint(os.path.join(tmp_path, "checkpoints", "step-000000004"))
    theirs = ckpt.load_checkpoint(os.path.join(straight[0], "checkpoints", "step-000000004"))
    for key, value in theirs["optimizer"]["state"][0].items():
        assert torch.equal(value, ours["optimizer"]["state"][0][key]), key


def test_killed_checkpoint_write_resumes_from_previous(flights, cache, tmp_path, monkeypatch):
    reference = run(config(flights, tmp_path / "straight", "--cache_dir", cache))
    real_save = ckpt.torch_save_atomic

    def dies_in_step_4(path, obj):
        if ".step-000000004" in path and path.endswith(ckpt.SCHEDULER_NAME):
            raise Killed(path)  # trainable + optimizer already written into the temp folder
        real_save(path, obj)
    monkeypatch.setattr(ckpt, "torch_save_atomic", dies_in_step_4)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run(config(flights, out, "--cache_dir", cache))
    monkeypatch.setattr(ckpt, "torch_save_atomic", real_save)
    root = os.path.join(out, "checkpoints")
    assert [step for step, _ in ckpt.list_checkpoints(root)] == [2]
    assert ckpt.resolve_resume("latest", root).endswith("step-000000002")
    summary = run(config(flights, out, "--cache_dir", cache, "--resume_from", "latest"))
    assert summary["step"] == K and summary["losses"] == reference["losses"][K // 2:]
    assert not [name for name in os.listdir(root) if name.startswith(".")]  # leftovers cleaned
    assert_identical(controller_weights(tmp_path / "straight"), controller_weights(out))


def test_rotation_keeps_newest_with_cache_and_lora(flights, cache, tmp_path):
    summary = run(config(flights, tmp_path / "out", "--save_steps", "1", "--max_checkpoints", "2", "--cache_dir",
                         cache, "--lora_base_model", "dit", "--lora_rank", "2"))
    assert summary["step"] == K
    names = sorted(os.listdir(tmp_path / "out" / "checkpoints"))
    assert names == ["step-000000003", "step-000000004"]
    assert sorted(os.listdir(cache)) == ["cache_info.json", "row-000001.pt", "row-000002.pt", "row-000003.pt"]
    saved = ckpt.load_checkpoint(str(tmp_path / "out" / "checkpoints" / "step-000000004"))["trainable_full"]
    assert any(".lora_A." in k for k in saved) and any(k.startswith(ckpt.CONTROLLER_PREFIX) for k in saved)
    with pytest.raises(ConfigError, match="--cache_dir: .* another setup \\(num_frames"):
        run(config(flights, tmp_path / "other", "--cache_dir", cache, "--num_frames", "5"))


def test_refuses_to_mix_runs(straight, flights):
    with pytest.raises(ConfigError, match="--resume_from"):
        run(config(flights, straight[0]))  # the folder already holds checkpoints
