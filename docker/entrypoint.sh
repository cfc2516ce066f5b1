#!/usr/bin/env bash
# The container's entry: decide what to serve from the mounted folders, say it in one line, then exec the server.
#   WANFLY_MODEL_DIR  missing or empty (Docker creates a missing bind-mount folder empty): serve the toy world
#                     (worlds/toy) instead of failing, and drop the real model's options (preset, compile).
#   WANFLY_ARTIFACTS  missing, empty or without action_train_config.json while weights are present: serve the base
#                     model without an action controller (the page's banner says input does not steer).
#   WANFLY_RECORDINGS_DIR  not writable by this user (a bind mount created by Docker as root): record into a
#                     temporary folder instead and say how to fix it.
# Anything else (weights present but incomplete, a bad option) is the server's one clear error, exit 1 or 2.
# Arguments are passed to python -m server after --host 0.0.0.0 --port 8000 (so they win).
set -euo pipefail

say() { echo "wanfly-entrypoint: $*" >&2; }
has_files() { [ -d "$1" ] && [ -n "$(ls -A "$1" 2>/dev/null)" ]; }

# compose passes unset knobs as empty strings ("${WANFLY_TOKEN:-}"): empty means unset (the server's default)
for name in $(compgen -e); do
    if [[ "$name" == WANFLY_* && -z "${!name}" ]]; then unset "$name"; fi
done

if [ -n "${WANFLY_MODEL_DIR:-}" ] && ! has_files "$WANFLY_MODEL_DIR"; then
    say "no weights in $WANFLY_MODEL_DIR: serving the TOY world (worlds/toy, 128x128, on the CPU unless WANFLY_DEVICE says otherwise)." \
        "Put the Wan2.2-TI2V-5B folder there (WAN_MODEL_DIR in docker-compose.yml) for the real model."
    unset WANFLY_MODEL_DIR WANFLY_ARTIFACTS WANFLY_PRESET WANFLY_COMPILE  # the real model's options
elif [ -n "${WANFLY_MODEL_DIR:-}" ] && [ -n "${WANFLY_ARTIFACTS:-}" ] \
        && [ ! -f "$WANFLY_ARTIFACTS/action_train_config.json" ]; then
    say "no trained controller in $WANFLY_ARTIFACTS (no action_train_config.json): serving the base model" \
        "WITHOUT action control (keys do not steer). Mount a training output folder there (WANFLY_ARTIFACTS_DIR)."
    unset WANFLY_ARTIFACTS
fi

if [ -n "${WANFLY_RECORDINGS_DIR:-}" ]; then
    dir="$WANFLY_RECORDINGS_DIR"
    if ! { mkdir -p "$dir" 2>/dev/null && touch "$dir/.wanfly-write-test" 2>/dev/null; }; then
        say "recordings: $dir is not a folder uid $(id -u) can write (a bind mount Docker created as root?):" \
            "recording into a temporary folder. Fix: chown it to $(id -u), or set WANFLY_UID/WANFLY_GID to its owner."
        unset WANFLY_RECORDINGS_DIR
    fi
    rm -f "$dir/.wanfly-write-test" 2>/dev/null || true
fi

exec python -m server --host 0.0.0.0 --port 8000 "$@"
