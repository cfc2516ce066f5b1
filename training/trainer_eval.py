"""``python -m training.trainer_eval <the run's training flags> [--eval_timesteps 8] [--eval_init]``

Does a trained controller use its actions? The flow-matching loss with the true actions vs shuffled actions at
identical noise and timesteps (``training.trainer.loss_probe``). It rebuilds the base model from the flags, loads
the run's artifacts from --output_path (controller, LoRA) and evaluates every row of --dataset_metadata_path (pass a
held-out CSV to measure generalisation). --min_timestep_boundary / --max_timestep_boundary restrict the timesteps.
"""
from __future__ import annotations

import argparse
import json
import sys

from training.trainer.config import ConfigError, parse_config, validate
from training.trainer.loss_probe import evaluate_run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.trainer_eval", description=__doc__.split("\n\n")[1])
    parser.add_argument("--eval_timesteps", type=int, default=8, help="noise/timestep draws per clip")
    parser.add_argument("--eval_init", action="store_true", help="measure the untrained controller instead")
    args, rest = parser.parse_known_args(argv)
    try:
        result = evaluate_run(validate(parse_config(rest)), args.eval_timesteps, args.eval_init)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"python -m training.trainer_eval: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
