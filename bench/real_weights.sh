#!/usr/bin/env bash
# The real-weights path at full size on one GPU (H100/H200), in under 10 minutes: a folder in the original
# Wan2.2-TI2V-5B layout with random weights (python -m models.fake_model_dir) -> from_model_dir -> a flight through
# python -m server --model_dir --preset realtime -> 2 training steps (LoRA + controller) -> merge_lora -> reload.
# bench/real_weights.py says what each step checks.
#
#   bench/real_weights.sh OUT_DIR              GPU: OUT_DIR/real_weights.json (bench.schema), real_weights.log,
#                                              server_first_run.log (what python -m server --model_dir printed)
#   bench/real_weights.sh OUT_DIR --dry_run    anywhere: print the steps' commands, run nothing
#   bench/real_weights.sh --fetch-wheels       here, with network: add the server's wheels to bench/wheels/ (after
#                                              bench/gpu.sh --fetch-wheels, which fetches diffsynth and the rest)
#
# The work folder ($RW_WORK, default /tmp/wanfly-real-weights) needs ~35 GB: the fake folder (22.8 GB) and the
# merged one (10 GB of new DiT shards, the rest hard-linked). imageio-ffmpeg is not carried (its wheel is 68 MB):
# the training clips are written with OpenCV there. Outside a git checkout set BENCH_COMMIT=<sha>.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/wheels
# What python -m server needs that the GPU image lacks (pinned to the versions tested here).
SERVER_WHEELS="fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
typing-inspection==0.4.5 uvicorn==0.54.0 websockets==17.4 python-multipart==0.0.34"

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" $SERVER_WHEELS
    ls -la "$WHEELS"
    exit 0
fi

OUT="${1:?usage: bench/real_weights.sh OUT_DIR [--dry_run] | --fetch-wheels}"
shift
WORK="${RW_WORK:-/tmp/wanfly-real-weights}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--dry_run" ]; then
    exec "$PY" -m bench.real_weights --work "$WORK" --dry_run
fi

mkdir -p "$OUT"
if ! "$PY" -c "import diffsynth, fastapi, uvicorn, websockets" 2>/dev/null; then
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run bench/gpu.sh --fetch-wheels and bench/real_weights.sh --fetch-wheels here first" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wanfly-site "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/wanfly-site"  # holds only what the machine lacks: shadows nothing
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
mkdir -p "$(dirname "$WORK")"
df -h "$(dirname "$WORK")" | tail -n 1
status=0
# The chain has its own time limit (--time_limit, 540 s by default); this one only catches a hang.
timeout --kill-after=20 "${RW_LIMIT:-575}" "$PY" -m bench.real_weights --work "$WORK" --out "$OUT/real_weights.json" \
    --drop_caches "$@" 2>&1 | tee "$OUT/real_weights.log" || status=$?
tail -n 300 "$WORK/logs/flight.log" > "$OUT/server_first_run.log" 2>/dev/null || true
exit "$status"
