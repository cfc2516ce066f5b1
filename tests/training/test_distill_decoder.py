"""python -m training.distill_decoder: the recipe runs on the tiny preset in seconds and writes a loadable small
decoder with its report; an interrupted run resumes exactly; bad options are refused by name."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.frames.small_decoder import CONFIG_FILE, WEIGHTS_FILE, decode_video, load_small_decoder
from models.loading import build_pipeline
from models.media import video_to_frames
from models.serve_config import ServeConfig
from training.data.synthetic import render_random_flight
from training.distill import data as distill_data
from training.distill import run as distill_run
from training.distill_decoder import main as distill_main


def recipe(out, work, *extra):
    return ["--preset", "tiny", "--out", str(out), "--work", str(work), "--widths", "8,8,8", "--blocks", "1,1,0",
            "--patch", "4", "--clips", "3", "--holdout", "1", "--frames", "5", "--eval_frames", "9", "--steps", "4",
            "--batch", "2", "--save_steps", "2", "--threads", "2", "--no_progress", *extra]


def test_the_recipe_runs_on_the_tiny_preset(tmp_path, capsys):
    assert distill_main(recipe(tmp_path / "out", tmp_path / "work")) == 0
    data = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    report = data["report"]
    assert report["steps"] == 4 and report["heldout_clips"] == 1 and report["heldout_frames_per_clip"] == 9
    assert report["stream_vs_oneshot_max_abs"] < 1e-5  # the held-out clips decode latent frame by latent frame
    assert 5 < report["psnr_to_teacher_db"] < 60
    assert report["cost"]["flops_ratio"] < 0.1  # the student is a fraction of the tiny VAE's decoder
    assert data["teacher"]["source"] == "preset tiny" and len(data["teacher"]["vae_sha256"]) == 64
    assert data["recipe"]["steps"] == 4 and data["recipe"]["widths"] == [8, 8, 8]
    assert (tmp_path / "out" / "side_by_side.png").stat().st_size > 1000
    decoder = load_small_decoder(str(tmp_path / "out"))
    assert decode_video(decoder, torch.zeros(1, 48, 3, 4, 4)).shape == (1, 3, 9, 64, 64)
    assert "psnr_to_teacher_db" in capsys.readouterr().out


def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    assert distill_main(recipe(tmp_path / "whole", tmp_path / "work_whole")) == 0
    original = distill_run.DistillRun.train_step

    def crash_at_step_3(self, step):
        if step == 3:
            raise KeyboardInterrupt  # after the checkpoint of step 2
        return original(self, step)

    monkeypatch.setattr(distill_run.DistillRun, "train_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        distill_main(recipe(tmp_path / "split", tmp_path / "work_split"))
    assert torch.load(tmp_path / "work_split" / distill_run.STATE_FILE, weights_only=False)["step"] == 2
    monkeypatch.setattr(distill_run.DistillRun, "train_step", original)
    assert distill_main(recipe(tmp_path / "split", tmp_path / "work_split")) == 0
    whole = load_file(str(tmp_path / "whole" / WEIGHTS_FILE))
    split = load_file(str(tmp_path / "split" / WEIGHTS_FILE))
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)


def test_crops_train_on_a_window_of_the_grid_and_its_pixels(tmp_path, monkeypatch):
    """--crop 2: each step's latents are a 2x2 window of the 4x4 grid and the targets the 32x32 pixels under it (the
    same window of the teacher's frames); the measure still decodes whole frames."""
    original, seen = distill_run.DistillRun.batch, []

    def spy(self, step):
        z, target = original(self, step)
        seen.append((tuple(z.shape), tuple(target.shape)))
        latents, teacher = self.data.latents, distill_run.to_video(self.data.teacher, "cpu")  # whole clips
        where = [(k, i, j) for k in range(len(latents)) for i in range(3) for j in range(3)
                 if torch.equal(latents[k, ..., i:i + 2, j:j + 2], z[0].cpu())]
        assert len(where) == 1, "the crop is one window of one clip's latent grid"
        k, i, j = where[0]
        assert torch.equal(teacher[k, :, :, 16 * i:16 * i + 32, 16 * j:16 * j + 32], target[0].cpu())
        return z, target

    monkeypatch.setattr(distill_run.DistillRun, "batch", spy)
    assert distill_main(recipe(tmp_path / "out", tmp_path / "work", "--crop", "2", "--batch", "1")) == 0
    assert seen == [((1, 48, 2, 2, 2), (1, 3, 5, 32, 32))] * 4
    report = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())["report"]
    assert report["heldout_frames_per_clip"] == 9 and report["stream_vs_oneshot_max_abs"] < 1e-5


@pytest.mark.parametrize("extra, message", [
    (["--frames", "6"], "--frames must be 4k+1"),
    (["--eval_frames", "1"], "--eval_frames must be 4k+1"),
    (["--ema", "1"], "--ema must be in [0, 1)"),
    (["--motion", "-1"], "--motion must be a number >= 0"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--crop", "-1"], "--crop must be >= 0"),
    (["--height", "40"], "--height must be a positive multiple of 32"),
    (["--blocks", "1,1"], "student: widths and blocks need one entry per level"),
    (["--patch", "2"], "student: widths/patch"),
    (["--widths", "8,x"], "--widths: expected comma-separated integers"),
    (["--generated", "-1"], "--generated must be >= 0"),
])
def test_bad_options_are_refused_by_name(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        distill_main(recipe(tmp_path / "out", tmp_path / "work", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "work")  # refused before anything was built


def test_a_model_dir_needs_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        distill_main(["--model_dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "--data: --model_dir needs clips" in capsys.readouterr().err


def test_a_model_dir_cannot_generate(tmp_path, capsys):
    with pytest.raises(SystemExit):
        distill_main(["--model_dir", str(tmp_path), "--data", str(tmp_path), "--generated", "2", "--out",
                      str(tmp_path / "out")])
    assert "--generated: needs --world or --preset" in capsys.readouterr().err


def test_generated_flights_are_the_worlds_own_stream_decoded_by_the_teacher(tmp_path):
    """--generated 2: two more training clips, whose latents are the tiny world's own stream from a synthetic
    flight's first frame and actions (GENERATED_START on), and whose targets are the teacher's decode of them."""
    assert distill_main(recipe(tmp_path / "out", tmp_path / "work", "--generated", "2")) == 0
    data = torch.load(tmp_path / "work" / distill_data.DATA_FILE, weights_only=False)["data"]
    assert data.latents.shape == (5, 48, 2, 4, 4) and data.teacher.shape == (5, 5, 64, 64, 3)
    pipe = build_pipeline(preset="tiny")
    video, _, actions, prompt = render_random_flight(0, distill_data.GENERATED_START + 1, 5, 64, 64, speed=1.0)
    stream = pipe.open_stream(video[0], prompt, seed=1, height=64, width=64)
    stream.step(actions)
    assert torch.equal(data.latents[4:5], stream.latents.float())  # the second generated flight, bit for bit
    teacher = video_to_frames(pipe.vae.decode(stream.latents, device="cpu"))
    assert np.array_equal(data.teacher[4], teacher)
    encoded = distill_data.encode_and_teach(pipe, video[None])[0]
    assert not torch.equal(encoded, data.latents[4:5])  # generated, not the flight's own frames encoded
    recipe_json = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())["recipe"]
    assert recipe_json["generated"] == 2


def test_a_chunked_world_cannot_generate():
    with pytest.raises(ValueError, match="--generated: w's serve.json says generation 'chunked'"):
        distill_run.stream_settings(ServeConfig(generation="chunked"), "w")
    serve = ServeConfig(generation="causal", block_frames=2, window=4, steps=3, action_guidance=2.0)
    assert distill_run.stream_settings(serve, "w") == {
        "steps": 3, "block_frames": 2, "window": 4, "sink": serve.sink, "action_guidance": 2.0,
        "action_guidance_rescale": serve.action_guidance_rescale}
    assert distill_run.stream_settings(None, None) == {}
