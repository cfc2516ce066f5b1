"""training.trainer.module: the controller sees in training exactly what it sees at inference for the same raw
actions (flags as given, magnitudes scaled once by MAGNITUDE_SCALE), on the tiny preset."""
import numpy as np
import torch
from PIL import Image

from models.action_format import MAGNITUDE_SCALE
from training.trainer.config import controller_config, parse_config
from training.trainer.module import ActionTrainingModule, build_controller, build_pipeline

RAW = np.zeros((2, 2, 8), np.float32)  # (T, 2, 8): step 0 Forward 0.01 + Yaw Left 1.5, step 1 Right 0.02
RAW[0, :, 0] = (1, 0.01)
RAW[0, :, 4] = (1, 1.5)
RAW[1, :, 3] = (1, 0.02)


def spy_on_controller(controller, seen):
    real = controller.build_action_emb

    def spy(binary, magnitude):
        seen.append((binary.detach().clone(), magnitude.detach().clone()))
        return real(binary, magnitude)
    controller.build_action_emb = spy


def test_the_controller_gets_the_same_inputs_in_training_and_at_inference(tmp_path):
    c = parse_config(["--preset", "tiny", "--dataset_base_path", str(tmp_path), "--num_frames", "9", "--height",
                      "64", "--width", "64", "--output_path", str(tmp_path / "out")])
    pipe, _ = build_pipeline(c, "cpu", torch.float32)
    controller = build_controller(controller_config(c), c.seed)
    module = ActionTrainingModule(pipe, controller, c)
    seen = []
    spy_on_controller(controller, seen)
    frames = [Image.fromarray(np.full((64, 64, 3), 10 * i, np.uint8)) for i in range(9)]
    loss = module({"video": frames, "prompt": "a drone", "action": torch.from_numpy(RAW)})
    assert torch.isfinite(loss)
    training = seen[-1]
    seen.clear()
    pipe(prompt="a drone", input_image=frames[0], height=64, width=64, num_frames=9, num_inference_steps=1, seed=0,
         cfg_scale=1.0, actions=RAW, output_type="floatpoint", tiled=False, progress_bar_cmd=lambda it: it)
    inference = seen[-1]
    expected_magnitude = torch.from_numpy(RAW[:, 1]) * torch.tensor(MAGNITUDE_SCALE)  # (T, 8)
    for binary, magnitude in (training, inference):
        assert binary.shape == magnitude.shape == (1, 2, 8)
        torch.testing.assert_close(binary[0], torch.from_numpy(RAW[:, 0]))
        torch.testing.assert_close(magnitude[0], expected_magnitude)  # Forward 1.0, Yaw Left 1.5, Right 2.0
    torch.testing.assert_close(training[1], inference[1])
