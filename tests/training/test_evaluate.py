"""python -m training.evaluate: every input mode end to end (CPU), the report files, user errors."""
import json

import numpy as np
import pytest
import torch

from models.action_format import ACTION_NAMES
from models.artifacts import ArtifactConfig, save_action_artifacts
from models.frames.small_decoder import (
    FOLDER,
    SmallDecoder,
    SmallDecoderConfig,
    decode_video,
    load_small_decoder,
    save_small_decoder,
)
from models.media import read_video
from models.small_world import SmallWorldConfig, save_small_world
from models.tiny import build_tiny_controller, build_tiny_pipeline
from training.data.synthetic import make_dataset
from training.evaluate import main
from training.evaluation import long_flight
from training.evaluation import suite as eval_suite
from training.evaluation.long_flight_scores import drift
from training.evaluation.sources import load_recordings, read_recording, synthetic_flights
from training.evaluation.suite import save_recording
from training.evaluation.vae_roundtrip import load_world_vae, roundtrip


@pytest.fixture(scope="module")
def flights():
    return synthetic_flights(3, seed=4, frames=17, height=64, width=64)  # 4 intervals each


def _spy_on_guidance(monkeypatch):
    seen, generate_clip = [], eval_suite.generate_clip

    def spy(*args, **kwargs):
        seen.append(args[9:11])  # (action_guidance, action_guidance_rescale), passed positionally by generate_suite
        return generate_clip(*args, **kwargs)
    monkeypatch.setattr(eval_suite, "generate_clip", spy)
    return seen


def test_recordings_and_comparison_report(tmp_path, flights):
    good, shuffled = tmp_path / "good", tmp_path / "shuffled"
    for k, clip in enumerate(flights):
        save_recording(good / clip["name"], clip["frames"], clip["actions"], clip["prompt"], 24)
        other = flights[(k + 1) % len(flights)]["actions"]  # another flight's actions, in the chunks format
        save_recording(shuffled / clip["name"], clip["frames"], other, clip["prompt"], 24)
        record = json.loads((shuffled / f"{clip['name']}.json").read_text())
        chunks = [{"actions": record["actions"][:2]}, {"actions": record["actions"][2:]}]
        (shuffled / f"{clip['name']}.json").write_text(json.dumps({"prompt": "p", "chunks": chunks}))
    assert np.allclose(read_recording(shuffled / f"{flights[0]['name']}.json")[0], flights[1]["actions"], atol=1e-6)
    assert main(["--recordings", str(good), str(shuffled), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [row["label"] for row in report["comparison"]] == ["good", "shuffled"]
    assert report["accuracy"] == report["entries"][0]["metrics"]["accuracy"] >= 0.9
    assert report["comparison"][1]["accuracy"] < report["accuracy"] - 0.2
    assert set(report["per_action"]) == set(ACTION_NAMES)
    assert {"precision", "recall", "f1"} <= set(report["per_action"]["Forward"])
    assert report["entries"][0]["clips"][0]["steps"] == 4 and report["intervals"] == 12
    for name in ("summary.md", "per_action.png", "confusion.png", "magnitudes.png"):
        assert (tmp_path / "out" / name).stat().st_size > 500, name
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## Comparison" in summary and "| good |" in summary


def test_csv_mode(tmp_path):
    make_dataset(tmp_path / "data", clips=2, frames=17, height=64, width=64, seed=5)
    assert main(["--csv", str(tmp_path / "data" / "metadata.csv"), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["entries"][0]["label"] == "metadata" and report["intervals"] == 8
    assert 0.8 <= report["accuracy"] <= 1.0  # measured 0.906 (64x64 is small for the flow)


def test_user_errors_exit_2_with_a_message(tmp_path, flights, capsys, monkeypatch):
    folder = tmp_path / "rec"
    save_recording(folder / "a", flights[0]["frames"], flights[0]["actions"], "p", 24)
    (folder / "a.json").unlink()
    assert main(["--recordings", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "a.mp4 has no sibling a.json" in err and "Traceback" not in err
    (folder / "a.json").write_text(json.dumps({"actions": [[0, 1]]}))
    assert main(["--recordings", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "a.json: actions: expected shape (T, 2, 8)" in capsys.readouterr().err
    assert main(["--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err
    assert main(["--generate", "--out", str(tmp_path / "o")]) == 2
    assert "exactly one of --preset tiny, --world DIR or --model_dir" in capsys.readouterr().err
    assert main(["--generate", "--preset", "tiny", "--flights", "loop", "--out", str(tmp_path / "o")]) == 2
    assert "unknown flight 'loop'" in capsys.readouterr().err
    argv = ["--generate", "--preset", "tiny", "--flights", "hover", "--shuffled", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--shuffled needs at least 2 --flights" in capsys.readouterr().err
    assert main(["--generate", "--world", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "has no world_config.json" in capsys.readouterr().err
    assert main(["--csv", str(tmp_path / "x.csv"), "--through_vae", "worlds/toy", "--out", str(tmp_path / "o")]) == 2
    assert "--through_vae needs --synthetic N" in capsys.readouterr().err

    def no_model(*args, **kwargs):
        raise AssertionError("a bad guidance option must be refused before a model is built")

    monkeypatch.setattr(eval_suite, "load_controller_pipeline", no_model)
    bad_guidance = (("--action_guidance", "0"), ("--action_guidance", "0.5"), ("--action_guidance_rescale", "1.5"))
    for option, value in bad_guidance:
        assert main(["--generate", "--world", "worlds/toy", option, value, "--out", str(tmp_path / "o")]) == 2
        assert f"{option[2:]} must be a number" in capsys.readouterr().err


def test_through_vae_scores_the_same_flights_after_the_worlds_vae(tmp_path):
    """--synthetic N --through_vae DIR: a second entry, the same flights encoded and decoded by the world's VAE
    (the ceiling of what a world with that VAE can show); the round trip keeps shapes and changes pixels."""
    out = tmp_path / "ceiling"
    assert main(["--synthetic", "2", "--num_frames", "5", "--height", "128", "--width", "128", "--speed", "5",
                 "--flow_stride", "1", "--through_vae", "worlds/toy", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [entry["label"] for entry in report["entries"]] == ["synthetic", "through VAE"]
    assert [entry["metrics"]["intervals"] for entry in report["entries"]] == [2, 2]
    clip = synthetic_flights(1, seed=0, frames=5, height=128, width=128, speed=5)[0]["frames"]
    back = roundtrip(load_world_vae("worlds/toy"), clip)
    assert back.shape == clip.shape and back.dtype == np.uint8
    error = np.abs(back.astype(float) - clip).mean()
    assert 1 < error < 40  # a lossy but faithful picture (the toy VAE: ~22 dB)


def test_through_vae_with_the_small_decoder_decodes_the_same_latents_with_it(tmp_path):
    """--decoder small: the round trip's frames are the world's small decoder's decode of the VAE encoder's latents
    (not the VAE decoder's), and the entry says so."""
    clip = synthetic_flights(1, seed=0, frames=5, height=128, width=128, speed=5)[0]["frames"]
    vae = load_world_vae("worlds/toy")
    small = load_small_decoder("worlds/toy/small_decoder")
    x = torch.from_numpy(clip).float().permute(3, 0, 1, 2)[None] / 127.5 - 1  # (1, 3, F, H, W)
    with torch.no_grad():
        expected = decode_video(small, vae.model.encode(x, vae.scale)).clamp(-1, 1)  # (1, 3, F, H, W)
    expected = ((expected[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert np.array_equal(roundtrip(vae, clip, small), expected)
    assert not np.array_equal(roundtrip(vae, clip), expected)  # the VAE's own decoder draws other pixels
    out = tmp_path / "small"
    assert main(["--synthetic", "1", "--num_frames", "5", "--height", "128", "--width", "128", "--speed", "5",
                 "--flow_stride", "1", "--through_vae", "worlds/toy", "--decoder", "small", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [entry["label"] for entry in report["entries"]] == ["synthetic", "through VAE + small decoder"]


def test_through_vae_with_the_small_decoder_needs_one(tmp_path, capsys):
    world = _tiny_world(tmp_path / "w", "causal")
    assert main(["--synthetic", "1", "--num_frames", "5", "--height", "64", "--width", "64", "--through_vae",
                 str(world), "--decoder", "small", "--out", str(tmp_path / "o")]) == 2
    assert "decoder: 'small' needs a small decoder" in capsys.readouterr().err


def test_generate_tiny_preset_end_to_end(tmp_path):
    out = tmp_path / "gen"
    flights = ["forward", "back", "yaw_left"]
    assert main(["--generate", "--preset", "tiny", "--num_frames", "9", "--steps", "1", "--scenes", "1",
                 "--flights", *flights, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["entries"][0]["label"] == "tiny-random" and report["intervals"] == 6
    assert report["near_chance"] is True and report["chance"]["p_value"] > 0.05
    assert 0.0 <= report["accuracy"] <= 1.0
    assert "near chance" in (out / "summary.md").read_text()
    assert any("tiny random preset" in note for note in report["notes"])
    saved = sorted(p.name for p in (out / "generated" / "tiny-random").iterdir())
    assert saved == sorted(f"scene0__{f}{ext}" for f in flights for ext in (".json", ".mp4"))
    clips = load_recordings(out / "generated" / "tiny-random")  # the saved clips rescore (after mp4 compression)
    assert [c["actions"].shape for c in clips] == [(2, 2, 8)] * 3


def test_generate_a_world_folder_with_both_baselines(tmp_path, monkeypatch):
    """--world takes the size, chunk length, steps and guidance from serve.json and the suite magnitudes from the
    world's action_stats; --shuffled and --with_random add the two baselines side by side."""
    out = tmp_path / "toy"
    seen = _spy_on_guidance(monkeypatch)
    assert main(["--generate", "--world", "worlds/toy", "--steps", "1", "--scenes", "1", "--flights", "forward",
                 "yaw_left", "--shuffled", "--with_random", "--out", str(out)]) == 0
    serve = json.loads(open("worlds/toy/serve.json").read())
    assert set(seen) == {(serve["action_guidance"], serve["action_guidance_rescale"])}
    report = json.loads((out / "report.json").read_text())
    labels = [entry["label"] for entry in report["entries"]]
    assert labels == ["toy", "toy shuffled actions", "tiny-random"]
    stats = json.loads(open("worlds/toy/action_train_config.json").read())
    p90 = stats["action_stats"]["actions"]["Forward"]["p90"]
    fed = json.loads((out / "generated" / "toy shuffled actions" / "scene0__forward.json").read_text())
    assert fed["actions"][0][1][0] == pytest.approx(p90, abs=1e-6)  # scored against the commanded flight
    video = read_video(out / "generated" / "toy" / "scene0__forward.mp4")
    assert video.shape[:3] == (serve["chunk_frames"], serve["height"], serve["width"])
    assert any("suite magnitudes" in note for note in report["notes"])


def test_guidance_options_override_the_worlds(tmp_path, monkeypatch):
    seen = _spy_on_guidance(monkeypatch)
    assert main(["--generate", "--world", "worlds/toy", "--steps", "1", "--scenes", "1", "--flights", "forward",
                 "--action_guidance", "2", "--action_guidance_rescale", "0", "--out", str(tmp_path / "o")]) == 0
    assert seen == [(2.0, 0.0)]  # 0 turns the world's rescale off rather than falling back to it


def _tiny_world(folder, generation):
    """A tiny random-weight world folder served as ``generation``; its keys send 0.05 per interval and 90 degrees,
    so an out-and-back turn is one interval each way."""
    save_small_world(str(folder), build_tiny_pipeline(seed=3), SmallWorldConfig())
    stats = {"actions": {name: {"p90": 90.0 if "Yaw" in name or "Pitch" in name else 0.05} for name in ACTION_NAMES}}
    save_action_artifacts(str(folder), build_tiny_controller(3, initial_scale=1.0),
                          ArtifactConfig(action_controller_config={}, base_model_id="t", action_stats=stats))
    serve = {"height": 64, "width": 64, "chunk_frames": 5, "fps": 8, "steps": 1, "generation": generation,
             "window": 2, "action_guidance": 2.0, "action_guidance_rescale": 0.5}
    (folder / "serve.json").write_text(json.dumps(serve))
    return folder


@pytest.fixture(scope="module")
def tiny_worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    return _tiny_world(root / "chunky", "chunked"), _tiny_world(root / "causy", "causal")


def test_long_flight_chunked_and_causal_worlds_side_by_side(tmp_path, tiny_worlds):
    """--long_flight --seconds 2: both worlds in one report, per 1 s window, with the true video beside."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than 2 threads on 2 shared cores
    try:
        assert main(["--long_flight", "--seconds", "2", "--window_seconds", "1", "--scenes", "1",
                     "--world", *map(str, tiny_worlds), "--out", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["kind"] == "long_flight" and (report["seconds"], report["edge_seconds"]) == (2, 1)
    assert [(e["label"], e["generation"]) for e in report["worlds"]] == [("chunky", "chunked"), ("causy", "causal")]
    for entry in report["worlds"]:
        assert [(w["start_s"], w["end_s"], w["intervals"]) for w in entry["windows"]] == [(0, 1, 2), (1, 2, 2)]
        assert entry["drift"]["psnr_db"] == pytest.approx(drift([w["psnr_db"] for w in entry["windows"]]), abs=1e-3)
        assert all(w["truth_accuracy"] is not None and 0 < w["sharpness_ratio"] for w in entry["windows"])
        assert set(entry["vae_drift"]) == {"psnr_db", "sharpness", "palette"}  # the VAE ceiling beside
        assert all(w["vae_psnr_db"] > 5 and 0 < w["vae_sharpness_ratio"] for w in entry["windows"])
        assert entry["overall"]["intervals"] == 4 and entry["scenes"][0]["out_and_back_intervals"] == {
            "yaw": 2, "forward": 2}
        for sides in entry["out_and_back"].values():  # the renderer returns exactly; random weights do not
            assert sides["truth"]["return_psnr_db"] > 100 > sides["truth"]["far_psnr_db"]
            assert sides["generated"]["return_psnr_db"] < 60
        assert set(entry["goals"]) == {"sharpness_drift_within_15pct", "palette_drift_within_15pct",
                                       "last_accuracy_within_0.05_of_first"}
    for label in ("chunky", "causy"):  # saved in the recordings format, with the true video beside
        clips = load_recordings(tmp_path / "out" / "videos" / label)
        assert [c["name"] for c in clips] == ["scene0__forward", "scene0__long", "scene0__yaw"]
        assert read_video(tmp_path / "out" / "videos" / label / "scene0__long.mp4").shape == (17, 64, 64, 3)
        assert (tmp_path / "out" / "videos" / label / "truth" / "scene0__long.mp4").is_file()
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| chunky | chunked |" in summary and "| causy | causal |" in summary and "## Out and back" in summary
    for name in ("windows.png", "frames.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000, name


def test_long_flight_decodes_with_the_worlds_decoder_or_the_option(tmp_path, monkeypatch, capsys):
    """A world whose serve.json says "decoder": "small" flies its long flights through its small decoder, as served;
    --decoder wan overrides it; a world without one is refused by name."""
    world = _tiny_world(tmp_path / "w", "causal")
    serve = json.loads((world / "serve.json").read_text())
    (world / "serve.json").write_text(json.dumps({**serve, "decoder": "small"}))
    out = str(tmp_path / "o")
    flight = ["--long_flight", "--seconds", "2", "--window_seconds", "1", "--world", str(world), "--out", out]
    assert main(flight) == 2
    assert "decoder: 'small' needs a small decoder" in capsys.readouterr().err
    save_small_decoder(str(world / FOLDER), SmallDecoder(SmallDecoderConfig(widths=[8, 8, 8], blocks=[1, 0, 0],
                                                                            patch=4)))
    seen = []

    class Flown(Exception):
        pass

    def fly_scene(pipe, *args):
        seen.append(pipe.decoder)
        raise Flown
    monkeypatch.setattr(long_flight, "fly_scene", fly_scene)
    for extra, decoder in (([], "small"), (["--decoder", "wan"], "wan")):
        with pytest.raises(Flown):
            main([*flight, *extra])
        assert seen[-1] == decoder


def test_long_flight_user_errors_exit_2_with_a_message(tmp_path, tiny_worlds, capsys):
    world, out = str(tiny_worlds[0]), str(tmp_path / "o")
    cases = [(["--seconds", "0", "--world", world], "--seconds must be a positive number, got 0.0"),
             (["--seconds", "1.3", "--world", world], "--seconds: 1.3 s at 8 fps is 2.6 intervals"),
             (["--seconds", "2", "--window_seconds", "3", "--world", world], "--window_seconds: a window (6 "),
             (["--seconds", "2", "--window_seconds", "1", "--edge_seconds", "1.5", "--world", world],
              "--edge_seconds: 1.5 s is more than"),
             (["--world", str(tmp_path / "nowhere")], "nowhere: not a folder"),
             ([], "--long_flight needs --world DIR"),
             (["--world", world, "--preset", "tiny"], "--preset is not a --long_flight option")]
    for argv, message in cases:
        assert main(["--long_flight", *argv, "--out", out]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert main(["--generate", "--world", world, world, "--out", out]) == 2
    assert "--world: --generate takes one world" in capsys.readouterr().err
    assert main(["--generate", "--world", world, "--seconds", "5", "--out", out]) == 2
    assert "--seconds is a --long_flight option" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was flown or written


@pytest.mark.parametrize("generation", ["chunked", "causal"])
def test_generate_through_the_small_decoder(tmp_path, capsys, generation):
    """--decoder small makes the suite's frames with the world's small decoder (here one that paints every pixel
    white: its head is zero with a bias of 1), in both generation modes; a world without one is refused by name."""
    world = _tiny_world(tmp_path / "w", generation)
    argv = ["--generate", "--world", str(world), "--scenes", "1", "--flights", "forward", "--num_frames", "9"]
    assert main([*argv, "--decoder", "small", "--out", str(tmp_path / "o")]) == 2
    assert "decoder: 'small' needs a small decoder" in capsys.readouterr().err
    decoder = SmallDecoder(SmallDecoderConfig(widths=[8, 8, 8], blocks=[1, 0, 0], patch=4))
    torch.nn.init.zeros_(decoder.head.weight)
    torch.nn.init.ones_(decoder.head.bias)
    save_small_decoder(str(world / FOLDER), decoder)
    for name in ("wan", "small"):
        assert main([*argv, "--decoder", name, "--out", str(tmp_path / name)]) == 0
    small = read_video(tmp_path / "small" / "generated" / "w" / "scene0__forward.mp4")
    wan = read_video(tmp_path / "wan" / "generated" / "w" / "scene0__forward.mp4")
    assert small.shape == wan.shape == (9, 64, 64, 3)
    assert small.min() >= 250 and wan.mean() < 200  # white from the small decoder, the VAE's picture from wan
