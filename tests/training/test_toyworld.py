"""The toy-world recipe end to end at a tiny size, and the committed worlds/toy/ (CPU)."""
import json
import os

import numpy as np
import torch
from PIL import Image

from models.tiny import load_small_world
from training import toyworld

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(REPO, "worlds", "toy")


def _generate(pipe, height, width, frames, steps=1):
    first = Image.fromarray(np.random.RandomState(0).randint(0, 255, (height, width, 3), dtype=np.uint8))
    actions = np.zeros(((frames - 1) // 4, 2, 8), dtype=np.float32)
    actions[:, :, 0] = (1.0, 0.01)  # Forward
    return pipe(prompt="a drone flies over a green meadow", input_image=first, height=height, width=width,
                num_frames=frames, num_inference_steps=steps, seed=0, cfg_scale=1.0, actions=actions,
                output_type="floatpoint", tiled=False, progress_bar_cmd=lambda it: it)


def test_recipe_runs_end_to_end(tmp_path):
    out = str(tmp_path / "world")
    argv = ["--out", out, "--height", "32", "--width", "32", "--frames", "5", "--clips", "3", "--holdout", "2",
            "--vae_dim", "8", "--dim", "48", "--heads", "1", "--layers", "1", "--vae_steps", "1", "--dit_steps", "2",
            "--vae_batch", "1", "--batch", "2", "--save_steps", "1", "--no_progress"]
    assert toyworld.main(argv) == 0
    report = json.load(open(os.path.join(out, "toyworld_report.json")))
    assert report["plan"] == {"vae_steps": 1, "dit_steps": 2}
    assert np.isfinite(report["vae_psnr_heldout_db"]) and np.isfinite(report["dit_loss_last10pct"])
    state = torch.load(os.path.join(out, toyworld.STATE_FILE), weights_only=False)
    assert state["state"]["stage"] == "done" and len(state["state"]["losses"]["dit"]) == 2
    pipe = load_small_world(out)
    assert pipe.action_controller is not None and pipe.action_stats is not None
    video = _generate(pipe, 32, 32, 5)
    assert video.shape == (1, 3, 5, 32, 32) and torch.isfinite(video).all()
    hints = json.load(open(os.path.join(out, "serve.json")))
    assert (hints["height"], hints["width"], hints["chunk_frames"]) == (32, 32, 5)


def test_committed_toy_world_loads_and_generates():
    hints = json.load(open(os.path.join(TOY, "serve.json")))
    pipe = load_small_world(TOY)
    assert pipe.action_controller is not None
    h, w, f = hints["height"], hints["width"], hints["chunk_frames"]
    video = _generate(pipe, h, w, f, steps=2)
    assert video.shape == (1, 3, f, h, w) and torch.isfinite(video).all()
    assert video.abs().max() <= 1.0 + 1e-5


def test_server_registers_the_toy_world():
    from server import worlds
    assert "toy" in worlds.WORLD_FACTORIES and worlds.default_world() == "toy"
