#!/usr/bin/env bash
# Create ./.venv and install wanfly into it. Usage: scripts/setup.sh [serve|cluster|train|dev]  (default: serve)
#   serve  the demo server (FastAPI, uvicorn, gradio) and the models
#   cluster  serve, plus Ray Serve for python -m server.cluster (docs/cluster.md; ~134 MB of wheels)
#   train  the training package
#   dev    everything (Ray Serve too: the cluster extra), plus pytest and a headless Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-serve}"
case "$extra" in serve|cluster|train|dev) ;; *) echo "usage: scripts/setup.sh [serve|cluster|train|dev]" >&2; exit 2 ;; esac

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins the tested versions (the Dockerfile and CI install the same set); torch and torchvision
# first: they must be a matching pair, or `import diffsynth` fails (torchvision::nms).
.venv/bin/python -m pip install -q -c constraints.txt torch torchvision
.venv/bin/python -m pip install -q -c constraints.txt -e ".[$extra]"

if [ "$extra" = dev ] && [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "warning: could not install chromium; browser tests will be skipped" >&2
    else
        echo "note: /usr/bin/chromium missing (install Debian's chromium); browser tests will be skipped" >&2
    fi
fi
echo "wanfly: .venv ready ($extra)"
