"""server.generation.worlds: a small-world folder's serve.json (size, chunk, banner line, first frame) and its
checks."""
import dataclasses
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.artifacts import ArtifactConfig, save_action_artifacts
from models.frames.small_decoder import FOLDER, SmallDecoder, SmallDecoderConfig, save_small_decoder
from models.options import CausalSettings
from models.small_world import SmallWorldConfig, save_small_world
from models.tiny import build_tiny_controller, build_tiny_pipeline
from server.app import create_app
from server.generation import world_args, worlds
from server.generation.generators import GenRequest, PipelineGenerator
from server.generation.worlds import check_world, load_world, with_frame_path, with_generation, world_summary
from server.settings import Settings


@pytest.fixture
def world_folder(tmp_path):
    pipe = build_tiny_pipeline(seed=3)
    controller = build_tiny_controller(3)
    save_small_world(str(tmp_path), pipe, SmallWorldConfig())
    stats = {"actions": {"Forward": {"p90": 0.07}}}
    save_action_artifacts(str(tmp_path), controller, ArtifactConfig(action_controller_config={}, base_model_id="t",
                                                                     action_stats=stats))
    hints = {"height": 32, "width": 64, "chunk_frames": 5, "fps": 12, "steps": 1, "prompt": "a drone over sand",
             "sample": "sand-dunes", "weights": "test world line", "action_guidance": 2.0,
             "action_guidance_rescale": 0.5, "notes": "expect sand"}
    (tmp_path / "serve.json").write_text(json.dumps(hints))
    return tmp_path


def test_folder_world_takes_its_serve_hints(world_folder):
    threads = torch.get_num_threads()
    try:
        world = load_world(Settings(world=str(world_folder), gradio=False, threads=1))
    finally:
        torch.set_num_threads(threads)
    summary = world_summary(world)
    assert (summary["height"], summary["width"], summary["chunk_frames"], summary["fps"]) == (32, 64, 5, 12)
    assert summary["sample"] == "sand-dunes" and summary["weights"] == "test world line"
    assert summary["prompt"] == "a drone over sand" and summary["random_weights"] is False
    assert summary["notes"] == "expect sand"  # /api/config carries it to the page
    assert summary["full_scale"][0] == pytest.approx(0.07)  # a held Forward key sends the stats' p90
    assert (summary["action_guidance"], summary["action_guidance_rescale"]) == (2.0, 0.5)


def test_generator_passes_the_worlds_action_guidance_with_actions_only(world_folder):
    threads = torch.get_num_threads()
    try:
        world = load_world(Settings(world=str(world_folder), gradio=False, threads=1, action_guidance=3.0,
                                    action_guidance_rescale=0.0))
    finally:
        torch.set_num_threads(threads)
    generator = PipelineGenerator(world)
    request = GenRequest(prompt="p", image=Image.new("RGB", (64, 32)), actions=np.zeros((1, 2, 8)), num_frames=5,
                         steps=1, seed=0, cfg_scale=1.0)
    kwargs = generator._pipe_kwargs(request)
    assert (kwargs["action_guidance"], kwargs["action_guidance_rescale"]) == (3.0, 0.0)  # settings override 2.0, 0.5
    request.actions = None
    kwargs = generator._pipe_kwargs(request)
    assert (kwargs["action_guidance"], kwargs["action_guidance_rescale"]) == (1.0, 0.0)


@pytest.mark.parametrize("field, value, message", [("action_guidance", 0.5, "action_guidance must be a number >= 1"),
                                                   ("action_guidance_rescale", 1.5,
                                                    "action_guidance_rescale must be a number in")])
def test_a_bad_action_guidance_is_refused_by_name(world_folder, field, value, message):
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match=message):
            load_world(Settings(world=str(world_folder), gradio=False, threads=1, **{field: value}))
    finally:
        torch.set_num_threads(threads)


def test_folder_world_naming_a_missing_sample_is_refused(world_folder):
    hints = json.loads((world_folder / "serve.json").read_text())
    (world_folder / "serve.json").write_text(json.dumps({**hints, "sample": "moon"}))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match="sample: the world's serve.json names 'moon'"):
            load_world(Settings(world=str(world_folder), gradio=False, threads=1))
    finally:
        torch.set_num_threads(threads)


def test_a_world_that_cannot_load_is_reported_by_readyz_without_a_traceback(world_folder, caplog):


    hints = json.loads((world_folder / "serve.json").read_text())
    (world_folder / "serve.json").write_text(json.dumps({**hints, "action_guidance_rescale": 3}))
    threads = torch.get_num_threads()
    try:
        with TestClient(create_app(Settings(world=str(world_folder), gradio=False, threads=1)),
                        base_url="http://localhost") as client:
            deadline = time.monotonic() + 60
            while client.get("/readyz").json()["error"] is None and time.monotonic() < deadline:
                time.sleep(0.1)
            response = client.get("/readyz")
    finally:
        torch.set_num_threads(threads)
    assert response.status_code == 503
    assert "action_guidance_rescale must be a number in [0, 1]" in response.json()["error"]
    failures = [r for r in caplog.records if "loading the world failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None  # one line naming the field, no stack trace


def test_server_registers_the_toy_world():
    assert "toy" in worlds.WORLD_FACTORIES and world_args.default_world() == "toy"
    assert world_args.WORLD_FACTORIES is worlds.WORLD_FACTORIES  # one registry, checked before the model loads


def test_a_serve_json_with_an_unknown_field_is_refused_naming_it(world_folder):
    hints = json.loads((world_folder / "serve.json").read_text())
    (world_folder / "serve.json").write_text(json.dumps({**hints, "chunk_frame": 9}))
    with pytest.raises(ValueError, match=r"serve.json: unknown field\(s\) \['chunk_frame'\]"):
        load_world(Settings(world=str(world_folder), gradio=False, threads=1))


def test_a_causal_serve_json_makes_a_causal_world_and_options_override_it(world_folder):
    hints = json.loads((world_folder / "serve.json").read_text())
    (world_folder / "serve.json").write_text(json.dumps({**hints, "generation": "causal", "block_frames": 1,
                                                         "window": 2, "sink": False}))
    threads = torch.get_num_threads()
    try:
        world = load_world(Settings(world=str(world_folder), gradio=False, threads=1))
        assert world.causal and world.causal_settings == CausalSettings(block_frames=1, window=2, sink=False)
        assert world.chunk_frames == 5 and world.max_frames is None  # a block's frames, like a first chunk
        summary = world_summary(world)
        assert (summary["generation"], summary["block_frames"], summary["window"], summary["sink"]) == \
            ("causal", 1, 2, False)
        world = load_world(Settings(world=str(world_folder), gradio=False, threads=1, block_frames=2, sink=True))
        assert world.causal_settings == CausalSettings(block_frames=2, window=2, sink=True)
        assert world.chunk_frames == 9
        assert not load_world(Settings(world=str(world_folder), gradio=False, threads=1,
                                       generation="chunked")).causal
    finally:
        torch.set_num_threads(threads)


def test_causal_options_are_checked_by_name(random_world):
    with pytest.raises(ValueError, match="generation must be one of"):
        Settings(generation="streamed")
    with pytest.raises(ValueError, match="block_frames must be an integer >= 1"):
        Settings(block_frames=0)
    with pytest.raises(ValueError, match="chunk_frames: a causal world makes blocks of block_frames=1"):
        with_generation(random_world, Settings(generation="causal", chunk_frames=9))
    with pytest.raises(ValueError, match="window must be >= 1 without a sink"):
        with_generation(random_world, Settings(generation="causal", window=0, sink=False))
    world = with_generation(random_world, Settings(generation="causal"))
    assert world.causal and world.chunk_frames == 5 and not random_world.causal  # the random preset: chunked
    with pytest.raises(ValueError, match="cfg_scale: a causal world generates without text CFG"):
        check_world(dataclasses.replace(world, cfg_scale=5.0), Settings())
    with pytest.raises(ValueError, match="generation: a causal world needs an action controller"):
        check_world(dataclasses.replace(world, pipe=SimpleNamespace(check_shape=lambda *a: None)), Settings())


def test_the_decode_lane_is_on_with_cuda_or_when_asked(random_world):
    """``--decode_overlap``: unset, a causal block decodes on its stream's lane when the world (or --decode_device)
    is on CUDA; on the CPU the blocks decode inline as before unless asked."""
    assert random_world.decode_overlap is False and world_summary(random_world)["decode_overlap"] is False
    asked = with_frame_path(random_world, Settings(world="random", gradio=False, decode_overlap=True))
    assert asked.decode_overlap is True and world_summary(asked)["decode_overlap"] is True
    on_gpu = dataclasses.replace(random_world, device="cuda:0")
    assert with_frame_path(on_gpu, Settings(world="random", gradio=False)).decode_overlap is True
    assert with_frame_path(on_gpu, Settings(world="random", gradio=False, decode_overlap=False)).decode_overlap is False


def test_the_decoder_comes_from_serve_json_or_the_option(world_folder):
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match="decoder: 'small' needs a small decoder"):
            load_world(Settings(world=str(world_folder), gradio=False, threads=1, decoder="small"))
        save_small_decoder(str(world_folder / FOLDER), SmallDecoder(SmallDecoderConfig(
            widths=[8, 8, 8], blocks=[1, 0, 0], patch=4)))
        world = load_world(Settings(world=str(world_folder), gradio=False, threads=1))
        assert world.decoder == "wan" and world.pipe.small_decoder is not None  # attached, not chosen
        hints = json.loads((world_folder / "serve.json").read_text())
        (world_folder / "serve.json").write_text(json.dumps({**hints, "decoder": "small"}))
        world = load_world(Settings(world=str(world_folder), gradio=False, threads=1))
        assert world.decoder == world.pipe.decoder == "small" and world_summary(world)["decoder"] == "small"
        frames = PipelineGenerator(world).generate(GenRequest(
            prompt="a drone", image=Image.new("RGB", (64, 32)), actions=np.zeros((1, 2, 8)), num_frames=5, steps=1,
            seed=0, cfg_scale=1.0))
        assert frames.shape == (5, 32, 64, 3)
        world = load_world(Settings(world=str(world_folder), gradio=False, threads=1, decoder="wan"))
        assert world.decoder == world.pipe.decoder == "wan"
        with pytest.raises(ValueError, match="fp8: the world runs on cpu"):
            load_world(Settings(world=str(world_folder), gradio=False, threads=1, fp8=True))
    finally:
        torch.set_num_threads(threads)
