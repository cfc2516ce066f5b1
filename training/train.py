"""Train the action controller (and optionally a DiT LoRA) on the seed's ``video,prompt,action`` CSV.

    python -m training.train --preset tiny --dataset_base_path DATA --max_steps 20 --output_path OUT
    accelerate launch [--config_file training/configs/...] -m training.train --model_dir WAN --dataset_base_path ...

Flow: validate flags -> validate every CSV row (rank 0) and compute action_stats -> build pipeline + controller (+LoRA)
-> optional latent cache (--cache_dir) -> resume -> write action_train_config.json -> train -> write
action_controller.safetensors (+ lora.safetensors) from the trained weights. ``--help`` documents every flag;
``training/configs/`` holds accelerate configs (one GPU, DDP, DeepSpeed ZeRO-2, two CPU processes).
"""
from __future__ import annotations

import logging
import sys

from training.data.dataset import DataError
from training.trainer.config import ConfigError, TrainConfig, parse_config, validate
from training.trainer.run import TrainingRun


def run(c: TrainConfig) -> dict:
    """Train with validated flags; returns a summary (final step, per-step losses, paths)."""
    return TrainingRun(c).train()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = validate(parse_config(argv))
        run(config)
    except (ConfigError, DataError) as error:
        print(f"python -m training.train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
