"""Does the controller use the actions? The flow-matching loss with the true actions vs the same model fed
shuffled actions (clip i gets clip i+1's), at identical noise and timesteps. A ratio < 1 means the actions carry
signal the model learned to use; an untrained controller (or one that ignores its input) gives ~1. The paired
difference and its standard error say whether a ratio near 1 is more than noise. --min_timestep_boundary /
--max_timestep_boundary restrict the timesteps (high noise is where knowing the motion helps most).

    python -m training.trainer_eval <the run's training flags> [--eval_timesteps 8] [--eval_init]

It rebuilds the base model from the flags, loads the run's artifacts from --output_path (controller, LoRA) and
evaluates every row of --dataset_metadata_path (pass a held-out CSV to measure generalisation).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


@torch.no_grad()
def action_signal(module, samples: list, timesteps: int = 8, seed: int = 0) -> dict:
    """Mean loss with true vs shuffled actions over ``samples`` x ``timesteps`` draws of (timestep, noise)."""
    if len(samples) < 2:
        raise ValueError("action_signal needs at least 2 samples to shuffle actions between")
    true_losses, shuffled_losses = [], []
    for i, sample in enumerate(samples):
        other = samples[(i + 1) % len(samples)]["action"]
        for k in range(timesteps):
            for action, bucket in ((sample["action"], true_losses), (other, shuffled_losses)):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed * 1_000_003 + i * 1009 + k)  # same timestep and noise for both
                    bucket.append(float(module(sample, action=action)))
    true, shuffled = torch.tensor(true_losses, dtype=torch.float64), torch.tensor(shuffled_losses, dtype=torch.float64)
    diff = true - shuffled  # paired: same clip, timestep and noise, so small effects are measurable
    return {"loss_true": float(true.mean()), "loss_shuffled": float(shuffled.mean()),
            "ratio": float(true.mean() / shuffled.mean()), "paired_diff": float(diff.mean()),
            "paired_diff_stderr": float(diff.std() / len(diff) ** 0.5), "samples": len(samples),
            "timesteps": timesteps}


def evaluate_run(c, timesteps: int, at_init: bool = False) -> dict:
    """Build the base model of ``c``, attach the run's artifacts (or the initial controller) and measure."""
    from models.action_format import num_actions_for_frames

    from .cli import controller_config, metadata_path
    from .data import ActionVideoDataset, read_metadata, validate_rows
    from .trainer_model import ActionTrainingModule, build_controller, build_pipeline, resolve_dtype, strip_for_cache

    pipe, _ = build_pipeline(c, "cuda" if torch.cuda.is_available() else "cpu", resolve_dtype(c))
    if at_init:
        controller = build_controller(controller_config(c), c.seed)
    else:
        pipe.load_action_artifacts(c.output_path)  # fuses the LoRA when the run trained one
        controller = pipe.action_controller
    c.lora_base_model, c.lora_checkpoint, c.trainable_models = None, None, "action_controller"
    module = ActionTrainingModule(pipe, controller, c).eval()
    rows, _ = validate_rows(read_metadata(metadata_path(c)), c.dataset_base_path, c.num_frames,
                            num_actions_for_frames(c.num_frames), "skip")
    dataset = ActionVideoDataset(rows, c.dataset_base_path, c.num_frames, c.height, c.width, c.max_pixels)
    samples = []
    for i in range(len(dataset)):  # encode each clip once; the frames are not kept
        sample = dataset[i]
        samples.append({"cached": strip_for_cache(module.encode(sample)), "action": sample["action"]})
    return action_signal(module, samples, timesteps, seed=c.seed)


def main(argv=None) -> int:
    from .cli import ConfigError, parse_config, validate

    parser = argparse.ArgumentParser(prog="python -m training.trainer_eval", add_help=True,
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--eval_timesteps", type=int, default=8, help="noise/timestep draws per clip")
    parser.add_argument("--eval_init", action="store_true", help="measure the untrained controller instead")
    args, rest = parser.parse_known_args(argv)
    try:
        c = validate(parse_config(rest))
        result = evaluate_run(c, args.eval_timesteps, args.eval_init)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"python -m training.trainer_eval: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
