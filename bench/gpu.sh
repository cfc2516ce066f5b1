#!/usr/bin/env bash
# Run every model benchmark at full size on one GPU (H100/H200) in under 10 minutes, or on CPU with --small.
#
#   bench/gpu.sh OUT_DIR            GPU: controller_overhead, chunk_latency, stream_latency, train_step,
#                                   decode_latency at full size (random weights)
#   bench/gpu.sh OUT_DIR --small    CPU: the same benches at their --small settings (uses ./.venv)
#   bench/gpu.sh --fetch-wheels     here, with network: fill bench/wheels/ with what the GPU machine lacks
#
# The GPU machine has python3 (3.12) with PyTorch, torchvision, transformers, numpy, ... but no diffsynth and no
# network: the missing packages travel as wheels in bench/wheels/ (git-ignored) and are installed with
# --no-deps into a private folder on PYTHONPATH, so the machine's own PyTorch is used. Each bench runs under a
# time limit; OUT_DIR receives their logs and results and results.json (bench.combine: every bench's figures and
# whole result, in the schema of bench/schema.py). Outside a git checkout (a copied tree) set BENCH_COMMIT=<sha>
# so the results name the commit they measured.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/wheels
# diffsynth 2.1.12 and what it imports that the GPU image lacks (torch and torchvision are NOT fetched).
MISSING="diffsynth==2.1.12 modelscope==1.40.2 modelscope-hub==0.5.1 ftfy==6.3.1 wcwidth==0.9.4 simplejpeg==1.9.0
cryptography cffi pycparser"

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p "$WHEELS"
    py="${PYTHON:-.venv/bin/python}"
    # shellcheck disable=SC2086
    "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_34_x86_64 -d "$WHEELS" $MISSING
    ls -la "$WHEELS"
    exit 0
fi

OUT="${1:?usage: bench/gpu.sh OUT_DIR [--small] | --fetch-wheels}"
SMALL="${2:-}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$SMALL" = "--small" ]; then
    PY="${PYTHON:-.venv/bin/python}"
    DEV=(--device cpu --small)
    LIMITS=(400 300 400 120 600)  # controller_overhead, chunk_latency, stream_latency, train_step, decode_latency
    CO_EXTRA=(--repeats 3)  # 2 cores: the 3072-wide CPU step takes seconds
    DL_EXTRA=(--sizes 64x64)  # one size: on loaded cores a 128x128 tiny-preset Wan decode takes ~10 s a push
else
    PY="${PYTHON:-python3}"
    if ! "$PY" -c "import diffsynth" 2>/dev/null; then
        ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run bench/gpu.sh --fetch-wheels here first" >&2; exit 2; }
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wanfly-site "$WHEELS"/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/wanfly-site"  # holds only what the machine lacks: shadows nothing
    fi
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
    "$PY" -c "import flash_attn" 2>/dev/null && echo "flash-attn: installed" || echo "flash-attn: not installed (torch SDPA)"
    DEV=(--device cuda)
    CO_EXTRA=()
    DL_EXTRA=()
    # seconds; the sum (590) with the install and start-up stays under 10 minutes. The three older benches took
    # 101-139 s together on H200s; stream_latency and decode_latency measure their most important cells first and
    # stop starting cells before their limit (their full grids take longer: run them alone for that, see
    # bench/README.md). decode_latency's GPU time is not measured yet: its limit is a budget, not a measurement.
    LIMITS=(80 160 150 80 120)  # controller_overhead, chunk_latency, stream_latency, train_step, decode_latency
fi

run() {  # run NAME LIMIT ARGS...: a bench under a time limit; a failure or timeout is reported, not fatal
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local started=$SECONDS
    if timeout --kill-after=10 "$limit" "$PY" "$@" > "$OUT/$name.log" 2>&1; then
        echo "   done in $((SECONDS - started)) s"
    else
        echo "   FAILED or timed out after $((SECONDS - started)) s (see $OUT/$name.log)"
    fi
    tail -n 12 "$OUT/$name.log"
}

run controller_overhead "${LIMITS[0]}" -m bench.controller_overhead "${DEV[@]}" "${CO_EXTRA[@]}" \
    --out "$OUT/controller_overhead.json"
run chunk_latency "${LIMITS[1]}" -m bench.chunk_latency "${DEV[@]}" --time_limit $((LIMITS[1] - 90)) \
    --out "$OUT/chunk_latency.json"
run stream_latency "${LIMITS[2]}" -m bench.stream_latency "${DEV[@]}" --time_limit $((LIMITS[2] - 30)) \
    --out "$OUT/stream_latency.json"
run train_step "${LIMITS[3]}" -m bench.train_step "${DEV[@]}" --out "$OUT/train_step.json"
run decode_latency "${LIMITS[4]}" -m bench.decode_latency "${DEV[@]}" "${DL_EXTRA[@]}" --time_limit $((LIMITS[4] - 40)) \
    --out "$OUT/decode_latency.json"
"$PY" -m bench.combine "$OUT"
