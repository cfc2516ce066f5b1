"""training.trainer.module: the controller sees in training exactly what it sees at inference for the same raw
actions (flags as given, magnitudes scaled once by MAGNITUDE_SCALE), on the tiny preset; a cached sample trains
like its raw one; a preview call does not leave the scheduler in inference mode."""
import numpy as np
import pytest
import torch
from PIL import Image

from models.action_format import MAGNITUDE_SCALE
from training.trainer.config import controller_config, parse_config
from training.trainer.module import ActionTrainingModule, build_controller, build_pipeline, strip_for_cache

RAW = np.zeros((2, 2, 8), np.float32)  # (T, 2, 8): step 0 Forward 0.01 + Yaw Left 1.5, step 1 Right 0.02
RAW[0, :, 0] = (1, 0.01)
RAW[0, :, 4] = (1, 1.5)
RAW[1, :, 3] = (1, 0.02)
FRAMES = [Image.fromarray(np.full((64, 64, 3), 10 * i, np.uint8)) for i in range(9)]


def spy_on_controller(controller, seen):
    real = controller.build_action_emb

    def spy(binary, magnitude):
        seen.append((binary.detach().clone(), magnitude.detach().clone()))
        return real(binary, magnitude)
    controller.build_action_emb = spy


def build_module(tmp_path, *extra):
    c = parse_config(["--preset", "tiny", "--dataset_base_path", str(tmp_path), "--num_frames", "9", "--height",
                      "64", "--width", "64", "--output_path", str(tmp_path / "out"), *extra])
    pipe, _ = build_pipeline(c, "cpu", torch.float32)
    controller = build_controller(controller_config(c), c.seed)
    return ActionTrainingModule(pipe, controller, c), pipe, controller


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    return build_module(tmp_path_factory.mktemp("module"))


def test_the_controller_gets_the_same_inputs_in_training_and_at_inference(chunked):
    module, pipe, controller = chunked
    seen = []
    spy_on_controller(controller, seen)
    loss = module({"video": FRAMES, "prompt": "a drone", "action": torch.from_numpy(RAW)})
    assert torch.isfinite(loss)
    training = seen[-1]
    seen.clear()
    pipe(prompt="a drone", input_image=FRAMES[0], height=64, width=64, num_frames=9, num_inference_steps=1, seed=0,
         cfg_scale=1.0, actions=RAW, output_type="floatpoint", tiled=False, progress_bar_cmd=lambda it: it)
    inference = seen[-1]
    expected_magnitude = torch.from_numpy(RAW[:, 1]) * torch.tensor(MAGNITUDE_SCALE)  # (T, 8)
    for binary, magnitude in (training, inference):
        assert binary.shape == magnitude.shape == (1, 2, 8)
        torch.testing.assert_close(binary[0], torch.from_numpy(RAW[:, 0]))
        torch.testing.assert_close(magnitude[0], expected_magnitude)  # Forward 1.0, Yaw Left 1.5, Right 2.0
    torch.testing.assert_close(training[1], inference[1])
    # the pipe(...) call left the scheduler with its 1-step inference schedule: training restores 1000 steps
    assert not pipe.scheduler.training
    seen.clear()
    module({"video": FRAMES, "prompt": "a drone", "action": torch.from_numpy(RAW)})
    assert pipe.scheduler.training and len(pipe.scheduler.timesteps) == 1000
    del controller.build_action_emb  # back to the class's method for the next test


def test_a_cached_sample_trains_like_its_raw_sample_and_an_action_argument_wins(chunked):
    module, pipe, controller = chunked
    sample = {"video": FRAMES, "prompt": "a drone", "action": torch.from_numpy(RAW)}
    cached = {"cached": strip_for_cache(module.encode(sample)), "action": sample["action"]}
    torch.manual_seed(5)
    raw_loss = module(sample)
    torch.manual_seed(5)
    module.encode(sample)  # the raw path's encode draws from the generator too: start the loss from one state
    torch.testing.assert_close(module(cached), raw_loss)
    seen = []
    spy_on_controller(controller, seen)
    other = np.zeros_like(RAW)
    other[:, :, 1] = (1, 0.03)  # Back, both steps
    module(cached, action=torch.from_numpy(other))
    del controller.build_action_emb
    torch.testing.assert_close(seen[-1][0][0], torch.from_numpy(other[:, 0]))
    torch.testing.assert_close(seen[-1][1][0, :, 1], torch.full((2,), 3.0))


def test_a_causal_module_trains_on_a_window_with_its_actions(tmp_path):
    module, _, controller = build_module(tmp_path, "--causal", "--window", "1", "--error_prob", "0",
                                         "--motion_weight", "2", "--rollout_guidance", "3")
    assert module.forcing.motion_weight == 2.0 and module.forcing.sampler().guidance == 3.0
    features = []  # what the action embedding reads: [8 flags, 8 scaled magnitudes] per token
    controller.action_embed.register_forward_pre_hook(lambda _, args: features.append(args[0].detach()))
    torch.manual_seed(0)
    loss = module({"video": FRAMES, "prompt": "a drone", "action": torch.from_numpy(RAW)})
    assert torch.isfinite(loss) and loss.requires_grad
    rows = {tuple(row.tolist()) for row in torch.cat([f.reshape(-1, 16) for f in features])}
    steps = {tuple(RAW[t, 0].tolist() + (RAW[t, 1] * np.array(MAGNITUDE_SCALE, np.float32)).tolist())
             for t in range(len(RAW))}
    assert rows & steps and rows <= steps | {(0.0,) * 16}
