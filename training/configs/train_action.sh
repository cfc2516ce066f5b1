#!/bin/bash
# The seed's train_action.sh for wanfly: Wan2.2-TI2V-5B action controller on a Sekai-style CSV (video,prompt,action).
# Run from the repository root. Add --config_file training/configs/accelerate_multi_gpu.yaml (DDP) or
# accelerate_deepspeed_zero2.yaml for several GPUs; --cache_dir to encode VAE latents + T5 once (split training);
# --resume_from latest to continue after a crash (needs --save_full_state).
set -euo pipefail
DATASET_BASE=${DATASET_BASE:-/path/to/sekai-game-drone_v2_processed}
METADATA_PATH=${METADATA_PATH:-${DATASET_BASE}/clips_metadata_diffsynth.csv}
MODEL_DIR=${MODEL_DIR:-/path/to/Wan2.2-TI2V-5B-local}
OUTPUT=${OUTPUT:-./outputs/train/Wan2.2-TI2V-5B_action_controller}

accelerate launch --config_file training/configs/accelerate_single_gpu.yaml -m training.train \
    --dataset_base_path "${DATASET_BASE}" \
    --dataset_metadata_path "${METADATA_PATH}" \
    --data_file_keys "video" \
    --dataset_num_workers 16 \
    --model_dir "${MODEL_DIR}" \
    --trainable_models "action_controller" \
    --action_controller_config "wan_ti2v_5b" \
    --action_injection_type "cross_attn_frame" \
    --action_initial_scale 0.01 \
    --learning_rate 1e-4 \
    --lr_warmup_ratio 0.05 \
    --lr_min_lr 5e-6 \
    --weight_decay 0.01 \
    --max_steps 40000 \
    --log_steps 10 \
    --save_steps 5000 \
    --save_full_state \
    --max_checkpoints 3 \
    --use_wandb \
    --wandb_project "wan-ti2v-action" \
    --wandb_run_name "action-controller" \
    --gradient_accumulation_steps 4 \
    --height 480 \
    --width 832 \
    --num_frames 81 \
    --output_path "${OUTPUT}" \
    "$@"
