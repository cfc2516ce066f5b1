import os
import re

import numpy as np
import pytest
import torch
from diffsynth.pipelines.wan_video import WanVideoPipeline

from models.action_format import MAGNITUDE_SCALE, constant_actions, split_actions
from models.controller import INJECTION_TYPES
from models.model_dir import check_model_dir
from models.pipeline import WanActionPipeline
from models.tiny import build_tiny_controller, build_tiny_pipeline

ACTIONS = constant_actions(2, {"Forward": 0.01, "Yaw Left": 1.0})  # (2, 2, 8) for 9 frames


@pytest.fixture(scope="module")
def stock_video(tiny_pipe, gen_kwargs):
    """The same tiny models run through an unmodified diffsynth WanVideoPipeline."""
    stock = WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    stock.dit, stock.vae, stock.text_encoder = tiny_pipe.dit, tiny_pipe.vae, tiny_pipe.text_encoder
    stock.tokenizer = tiny_pipe.tokenizer
    stock.height_division_factor = stock.width_division_factor = 32
    return stock(**gen_kwargs)


@pytest.fixture(scope="module")
def gen_kwargs(first_frame):  # module-scoped copy of the conftest fixture, for the module-scoped stock video
    return dict(prompt="a drone flies over a green field", negative_prompt="blurry", input_image=first_frame,
                height=64, width=64, num_frames=9, num_inference_steps=2, seed=1, cfg_scale=5.0,
                output_type="floatpoint", tiled=False, progress_bar_cmd=lambda it: it)


def test_shapes_and_stock_identity_without_actions(tiny_pipe, pipe_with, gen_kwargs, stock_video):
    assert stock_video.shape == (1, 3, 9, 64, 64)
    assert torch.equal(tiny_pipe(**gen_kwargs), stock_video)  # no controller
    pipe = pipe_with(build_tiny_controller(0, initial_scale=1.0))
    assert torch.equal(pipe(**gen_kwargs), stock_video)  # a controller but no actions


@pytest.mark.parametrize("injection_type", INJECTION_TYPES)
def test_zero_scale_is_bit_identical_and_actions_change_only_later_frames(injection_type, pipe_with, gen_kwargs,
                                                                          stock_video):
    pipe = pipe_with(build_tiny_controller(0, injection_type=injection_type, initial_scale=0.0))
    assert torch.equal(pipe(actions=ACTIONS, **gen_kwargs), stock_video)
    pipe.set_action_controller(build_tiny_controller(0, injection_type=injection_type, initial_scale=1.0))
    moved = pipe(actions=ACTIONS, **gen_kwargs)
    assert torch.equal(moved[:, :, 0], stock_video[:, :, 0])  # the first frame is the input image's
    assert (moved[:, :, 1:] - stock_video[:, :, 1:]).abs().max() > 1e-3
    other = pipe(actions=constant_actions(2, {"Back": 0.01, "Pitch Up": 1.0}), **gen_kwargs)
    assert (other[:, :, 1:] - moved[:, :, 1:]).abs().max() > 1e-3  # different actions, different videos


@pytest.mark.parametrize("injection_type", INJECTION_TYPES)
def test_cfg_merge_applies_actions_to_both_branches(injection_type, pipe_with, gen_kwargs):
    pipe = pipe_with(build_tiny_controller(0, injection_type=injection_type, initial_scale=1.0))
    separate = pipe(actions=ACTIONS, cfg_merge=False, **gen_kwargs)
    merged = pipe(actions=ACTIONS, cfg_merge=True, **gen_kwargs)
    assert (separate - merged).abs().max() < 1e-4


def test_seed_form_equals_raw_form(pipe_with, gen_kwargs):
    pipe = pipe_with(build_tiny_controller(0, initial_scale=1.0))
    binary, magnitude = split_actions(ACTIONS, MAGNITUDE_SCALE)
    assert torch.equal(pipe(actions=ACTIONS, **gen_kwargs),
                       pipe(action_binary=binary, action_magnitude=magnitude, **gen_kwargs))


def test_inject_layers_are_honoured(pipe_with, gen_kwargs):
    controller = build_tiny_controller(0, inject_layers=[1], initial_scale=1.0)
    pipe = pipe_with(controller)
    base = pipe(actions=ACTIONS, **gen_kwargs)
    with torch.no_grad():
        pipe.action_controller.output_scale[0] = 5.0  # layer 0 is not injected: no effect
    assert torch.equal(pipe(actions=ACTIONS, **gen_kwargs), base)
    with torch.no_grad():
        pipe.action_controller.output_scale[1] = 5.0
    assert (pipe(actions=ACTIONS, **gen_kwargs) - base).abs().max() > 1e-3


@pytest.mark.parametrize("injection_type", INJECTION_TYPES)
def test_text_to_video_with_actions(injection_type, pipe_with, gen_kwargs):
    pipe = pipe_with(build_tiny_controller(0, injection_type=injection_type, initial_scale=1.0))
    kwargs = {**gen_kwargs, "input_image": None}
    plain = pipe(**kwargs)
    moved = pipe(actions=ACTIONS, **kwargs)
    assert moved.shape == plain.shape == (1, 3, 9, 64, 64)
    assert (moved - plain).abs().max() > 1e-3


def _training_loss(pipe, binary, magnitude, checkpointing):
    torch.manual_seed(0)
    latents = torch.randn(1, 48, 3, 2, 2)  # (B, C, F, h, w): 9 frames at 64x64
    context = torch.randn(1, 8, 32)
    out = pipe.model_fn(dit=pipe.dit, action_controller=pipe.action_controller, latents=latents,
                        timestep=torch.tensor([500.0]), context=context, action_binary=binary,
                        action_magnitude=magnitude, fuse_vae_embedding_in_latents=True,
                        use_gradient_checkpointing=checkpointing)
    return (out[:, :, 1:] ** 2).mean()


@pytest.mark.parametrize("injection_type", INJECTION_TYPES)
def test_only_the_controller_gets_gradients_and_checkpointing_matches(injection_type, pipe_with):
    pipe = pipe_with(build_tiny_controller(0, injection_type=injection_type, initial_scale=0.5))
    controller = pipe.action_controller.train().requires_grad_(True)
    binary, magnitude = split_actions(ACTIONS)
    grads = []
    for checkpointing in (False, True):
        controller.zero_grad()
        _training_loss(pipe, binary, magnitude, checkpointing).backward()
        grads.append({n: p.grad.clone() for n, p in controller.named_parameters()})
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name
    assert all(p.grad is None for p in pipe.dit.parameters())
    assert not any(p.requires_grad for p in pipe.dit.parameters())


def test_errors_name_the_problem(tiny_pipe, pipe_with, gen_kwargs):
    with pytest.raises(ValueError, match="no action controller"):
        tiny_pipe(actions=ACTIONS, **gen_kwargs)
    pipe = pipe_with(build_tiny_controller(0))
    binary, magnitude = split_actions(ACTIONS)
    with pytest.raises(ValueError, match="not both"):
        pipe(actions=ACTIONS, action_binary=binary, action_magnitude=magnitude, **gen_kwargs)
    with pytest.raises(ValueError, match="3 steps given, but num_frames=9 needs 2"):
        pipe(actions=constant_actions(3, {"Forward": 0.01}), **gen_kwargs)
    with pytest.raises(ValueError, match="num_frames"):
        pipe(actions=ACTIONS, **{**gen_kwargs, "num_frames": 10})
    with pytest.raises(ValueError, match="height must be a positive multiple of 32"):
        pipe(**{**gen_kwargs, "height": 48})
    with pytest.raises(ValueError, match="binary flags"):
        pipe(actions=torch.full((2, 2, 8), 0.5), **gen_kwargs)
    pipe.set_action_controller(build_tiny_controller(0, num_latent_frames=1))
    with pytest.raises(ValueError, match="num_latent_frames"):
        pipe(actions=ACTIONS, **gen_kwargs)
    with pytest.raises(ValueError, match="hidden_size 96 != DiT width 64"):
        pipe.set_action_controller(build_tiny_controller(0, hidden_size=96, num_heads=2))


def test_prompt_is_encoded_once_for_repeated_chunks(tiny_pipe, gen_kwargs):
    calls = []
    handle = tiny_pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny_pipe.prompt_cache.clear()
        for seed in range(3):
            tiny_pipe(**{**gen_kwargs, "seed": seed, "prompt": "a drone over a desert at dusk"})
    finally:
        handle.remove()
    assert len(calls) == 2  # the prompt and the negative prompt, once each


def test_from_base_converts_a_stock_pipeline(tiny_pipe, gen_kwargs):
    stock = WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    stock.dit, stock.vae, stock.text_encoder = tiny_pipe.dit, tiny_pipe.vae, tiny_pipe.text_encoder
    stock.tokenizer = tiny_pipe.tokenizer
    pipe = WanActionPipeline.from_base(stock)
    assert isinstance(pipe, WanActionPipeline) and "action_controller" in pipe.in_iteration_models
    assert pipe.action_controller is None and pipe.dit is tiny_pipe.dit


def test_from_model_dir_lists_every_missing_file(tmp_path):
    (tmp_path / "Wan2.2_VAE.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as error:
        WanActionPipeline.from_model_dir(str(tmp_path), device="cpu")
    message = str(error.value)
    for name in ("diffusion_pytorch_model*.safetensors", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/"):
        assert name in message
    assert "missing: " in message and "Wan2.2_VAE.pth, " not in message.split("Expected")[0]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        check_model_dir(os.path.join(tmp_path, "nope"))


SLOW = not os.environ.get("WANFLY_SLOW_TESTS")


def test_compile_for_inference_wraps_blocks_and_controller():
    """Cheap: wrapping compiles nothing until the first call (a fresh pipeline, the shared one stays eager)."""
    pipe = build_tiny_pipeline(seed=0).set_action_controller(build_tiny_controller(seed=0))
    pipe.compile_for_inference()
    assert pipe.compiled and all(block._compiled_call_impl is not None for block in pipe.dit.blocks)
    for name in ("apply_action", "add_to_tmod"):
        assert name in vars(pipe.action_controller)  # instance attributes shadow the eager methods


def test_compiled_graphs_compute_what_the_eager_pipeline_computes(gen_kwargs, monkeypatch):
    """Numbers by default: the graphs torch.compile captures of the blocks and the controller (TorchDynamo, run by
    its eager backend: seconds, not the ~100 s of inductor code generation) give the eager latents, and the
    controller's wrappers run (a wrapper around the wrong method, or graphs that drop the actions, would not)."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile

    def eager_backend(fn=None, *, mode=None, dynamic=None, **kwargs):
        return real_compile(fn, backend="eager", dynamic=dynamic)
    monkeypatch.setattr(torch, "compile", eager_backend)
    torch._dynamo.reset()
    counters.clear()
    pipe = build_tiny_pipeline(seed=0).set_action_controller(build_tiny_controller(seed=0, initial_scale=0.5))
    kwargs = dict(gen_kwargs, actions=constant_actions(2, {"Forward": 0.01, "Yaw Left": 1.0}), cfg_scale=1.0,
                  num_inference_steps=1)
    eager = pipe.generate_latents(**kwargs)  # (1, 48, 3, 4, 4)
    hover = pipe.generate_latents(**dict(kwargs, actions=constant_actions(2, {})))
    pipe.compile_for_inference()
    compiled = pipe.generate_latents(**kwargs)
    assert counters["stats"]["unique_graphs"] > 0  # something was captured
    wrappers = vars(pipe.action_controller)  # instance attributes shadowing the eager methods
    assert [wrappers[name]._torchdynamo_orig_callable.__name__ for name in ("apply_action", "add_to_tmod")] == [
        "apply_action", "add_to_tmod"]
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert (compiled - hover).abs().max() > 1e-3  # the actions reach the compiled graphs
    torch._dynamo.reset()


@pytest.mark.skipif(SLOW, reason="torch.compile of the tiny pipeline takes ~100 s on 2 CPU cores; "
                                 "set WANFLY_SLOW_TESTS=1 to run it")
def test_compiled_pipeline_matches_eager(gen_kwargs):
    pipe = build_tiny_pipeline(seed=0).set_action_controller(build_tiny_controller(seed=0, initial_scale=0.5))
    kwargs = dict(gen_kwargs, actions=constant_actions(2, {"Forward": 0.01, "Yaw Left": 1.0}))
    eager = pipe.generate_latents(**kwargs)  # (1, 48, 3, 4, 4)
    pipe.compile_for_inference()
    compiled = pipe.generate_latents(**kwargs)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)  # measured: max |diff| 4.8e-7 (fp32, CPU)


# ---- how a call's actions are resolved, without generating (issue 23) ----------------------------------------
RAW_ACTIONS = np.zeros((2, 2, 8), np.float32)  # (T, 2, 8): Forward 0.01, then Yaw Right 1.5
RAW_ACTIONS[0, :, 0] = (1, 0.01)
RAW_ACTIONS[1, :, 5] = (1, 1.5)


def test_raw_actions_use_the_pipelines_own_scale(pipe_with):
    pipe = pipe_with(build_tiny_controller(0), magnitude_scale=[50] * 4 + [2] * 4)
    binary, magnitude = pipe.resolve_actions(9, actions=RAW_ACTIONS)
    assert binary.shape == magnitude.shape == (1, 2, 8)
    assert magnitude[0, 0, 0].item() == pytest.approx(0.5) and magnitude[0, 1, 5].item() == pytest.approx(3.0)
    pipe.set_action_controller(pipe.action_controller, magnitude_scale=MAGNITUDE_SCALE)
    assert pipe.resolve_actions(9, actions=RAW_ACTIONS)[1][0, 0, 0].item() == pytest.approx(1.0)


def test_a_bad_scale_names_its_argument(pipe_with):
    with pytest.raises(ValueError, match=r"^action_magnitude_scale: expected 8 positive finite numbers"):
        pipe_with(build_tiny_controller(0), magnitude_scale=[1] * 7)


def test_flags_alone_are_actions_with_zero_magnitude(pipe_with):
    pipe = pipe_with(build_tiny_controller(0))
    flags = torch.tensor(RAW_ACTIONS[:, 0])  # (T, 8)
    binary, magnitude = pipe.resolve_actions(9, action_binary=flags)
    torch.testing.assert_close(binary[0], flags)
    assert magnitude.shape == (1, 2, 8) and magnitude.abs().max() == 0
    assert pipe.resolve_actions(9) == (None, None)


def test_both_forms_at_once_are_refused_even_with_flags_only(pipe_with):
    pipe = pipe_with(build_tiny_controller(0))
    message = ("pass either actions= (raw (T,2,8)) or action_binary=/action_magnitude= (already scaled), not both")
    for extra in ({"action_binary": RAW_ACTIONS[:, 0]}, {"action_magnitude": RAW_ACTIONS[:, 1]}):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            pipe.resolve_actions(9, actions=RAW_ACTIONS, **extra)


def test_actions_without_a_controller_say_how_to_attach_one(tiny_pipe):
    message = ("actions were given but the pipeline has no action controller "
               "(call pipe.set_action_controller(...) or pipe.load_action_artifacts(folder))")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        tiny_pipe.resolve_actions(9, actions=RAW_ACTIONS)


def test_exactly_as_many_steps_as_the_controller_has_frames_is_fine(pipe_with):
    pipe = pipe_with(build_tiny_controller(0, num_latent_frames=2))
    assert pipe.resolve_actions(9, actions=RAW_ACTIONS)[0].shape == (1, 2, 8)
    with pytest.raises(ValueError, match=r"num_frames=13 needs 3 steps, more than the controller's "
                                         r"num_latent_frames \(2\)"):
        pipe.resolve_actions(13, actions=np.zeros((3, 2, 8), np.float32))
