"""``python -m training.merge_lora --model_dir WAN --lora_path RUN/lora.safetensors [--alpha 1.0 --output_dir DIR
--overwrite --link auto]``

Merges a trained DiT LoRA into the base weights, writing a new base folder (``training.trainer.lora_merge``).
"""
from __future__ import annotations

import argparse
import sys

from training.trainer.lora_merge import merge_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.merge_lora", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="original Wan2.2-TI2V-5B folder (the base)")
    parser.add_argument("--lora_path", required=True, help="lora.safetensors, or a training run folder holding one")
    parser.add_argument("--alpha", type=float, default=1.0, help="LoRA strength (1.0 = as trained)")
    parser.add_argument("--output_dir", default=None, help="default ./outputs/merged/<base_name>_merged")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    parser.add_argument("--link", choices=("auto", "hardlink", "symlink", "copy"), default="auto",
                        help="how unchanged files (T5, VAE, tokenizer) reach the output; auto = hardlink, else copy")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = merge_folder(args.model_dir, args.lora_path, args.alpha, args.output_dir, args.overwrite, args.link)
    except (ValueError, OSError) as error:
        print(f"python -m training.merge_lora: error: {error}", file=sys.stderr)
        return 2
    print(f"merged {args.lora_path} into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
