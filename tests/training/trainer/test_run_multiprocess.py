"""training.trainer.run under two CPU processes (accelerate, gloo): one data order, one writer."""
import json
import os
import subprocess
import sys

import torch

from models.tiny import build_tiny_pipeline
from training.data.synthetic import make_dataset
from training.trainer import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_two_processes_train_and_write_once(tmp_path):
    make_dataset(tmp_path / "data", clips=3, frames=9, height=32, width=32, seed=5)
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               os.path.join(ROOT, "training", "configs", "accelerate_cpu_2proc.yaml"), "--main_process_port", "0",
               "-m", "training.train", "--preset", "tiny", "--dataset_base_path", str(tmp_path / "data"),
               "--num_frames", "9", "--height", "32", "--width", "32", "--max_steps", "2", "--save_steps", "1",
               "--save_full_state", "--gradient_accumulation_steps", "2", "--log_steps", "1",
               "--output_path", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    assert sorted(os.listdir(out)) == ["action_controller.safetensors", "action_train_config.json", "checkpoints"]
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000000001", "step-000000002"]
    state = ckpt.load_checkpoint(str(out / "checkpoints" / "step-000000002"))
    assert state["trainer_state"]["world_size"] == 2
    assert state["trainer_state"]["samples"] == 2 * 2 * 2  # steps x accumulation x processes
    assert len(state["rng_states"]) == 2  # one per rank, gathered to rank 0
    assert not torch.equal(state["rng_states"][0]["torch"], state["rng_states"][1]["torch"])  # seed + rank
    config = json.loads((out / "action_train_config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["status"] == "finished"
    assert result.stdout.count("step 2 |") + result.stderr.count("step 2 |") == 1  # only rank 0 logs

    build_tiny_pipeline(0).load_action_artifacts(str(out))
