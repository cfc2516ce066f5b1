#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (pinned in pyproject's dev extra). Not part of CI: slow on 2 cores.
# Usage: scripts/mutation.sh MODULE...   e.g. scripts/mutation.sh models/action_format.py server/inputs.py
#        scripts/mutation.sh all          every module in the table below, in order
# Each module runs in its own scratch copy of the working tree (outputs/mutation/<name>/, git-ignored) with only the
# tests that exercise it, so one module takes minutes. The score excludes the accepted equivalent mutants listed in
# docs/testing.md (a line "- `mutant name`: reason"). Results: outputs/mutation/<name>/survivors.txt and a score
# line per module; `cd outputs/mutation/<name> && mutmut show NAME` shows a mutant's diff.
# MUTATION_RERUN=1 scripts/mutation.sh MODULE: after writing tests for survivors, copy tests/ into the module's
# existing scratch copy and run only its survivors again (new tests are traced first); the score covers all mutants.
# Only for new tests in the files the table already lists: mutmut forgets its results when its setup changes.
# MUTATION_SCORE_ONLY=1 scripts/mutation.sh MODULE: score the last results again (after listing equivalent mutants).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=/work/main/.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

# module | mutant names (space-separated globs; "*" = every function of the file) | tests that exercise it
table() {
cat <<'TABLE'
models/action_format.py|*|tests/models/test_action_format.py
models/pipeline.py|models.pipeline.xǁWanActionPipelineǁ__call__* models.pipeline.xǁWanActionPipelineǁresolve_actions* models.pipeline.xǁWanActionPipelineǁset_action_controller*|tests/models/test_pipeline.py
models/controller.py|*|tests/models/test_controller.py tests/models/test_controller_config.py
models/streaming.py|*|tests/models/test_streaming.py
training/trainer/module.py|training.trainer.module.xǁActionTrainingModuleǁaction_inputs* training.trainer.module.xǁActionTrainingModuleǁforward*|tests/training/trainer/test_module.py
training/data/pose_actions.py|*|tests/training/data/test_pose_actions.py tests/training/data/test_sekai.py tests/training/data/test_pose_numbers.py
server/inputs.py|*|tests/server/test_inputs.py
server/protocol.py|*|tests/server/test_protocol.py
server/media/recording.py|*|tests/server/media/test_recording.py tests/server/media/test_recording_writer.py tests/server/media/test_recording_store.py
server/generation/streams.py|*|tests/server/generation/test_streams.py
server/generation/engine.py|server.generation.engine.xǁEngineǁ_pick* server.generation.engine.xǁEngineǁlead_s* server.generation.engine.xǁEngineǁ_open_chunk*|tests/server/generation/test_engine.py tests/server/generation/test_engine_pacing.py
TABLE
}

main() {  # one function: bash reads it whole, so editing this file cannot disturb a running run
    modules=("$@")
    [ ${#modules[@]} -gt 0 ] || { echo "usage: scripts/mutation.sh MODULE... | all" >&2; exit 2; }
    if [ "${modules[0]}" = all ]; then mapfile -t modules < <(table | cut -d'|' -f1); fi

    # accepted equivalent mutants: "- `name`: reason" lines of docs/testing.md
    mapfile -t equivalent < <(grep -oP '^- `\K[^`]+(?=`: )' docs/testing.md 2>/dev/null || true)

    for module in "${modules[@]}"; do
        row=$(table | grep -F "$module|" || true)
        [ -n "$row" ] || { echo "$module: not in scripts/mutation.sh's table" >&2; exit 2; }
        IFS='|' read -r _ names tests <<<"$row"
        name=$(echo "$module" | tr '/' '_' | sed 's/\.py$//')
        work="$root/outputs/mutation/$name"
        rerun=()
        if [ "${MUTATION_SCORE_ONLY:-0}" = 1 ]; then
            [ -s "$work/results.txt" ] || { echo "$module: no results to score in $work" >&2; exit 2; }
        elif [ "${MUTATION_RERUN:-0}" = 1 ] && [ -s "$work/survivors.txt" ]; then
            # mutmut forgets every earlier result when its setup changes, so a rerun keeps the test selection
            for t in $tests; do
                grep -qx "    $t" "$work/setup.cfg" || { echo "$module: $t is new in the table: run it in full" >&2; exit 2; }
            done
            cp -r tests/. "$work/tests/"
            mapfile -t rerun < <(cut -d: -f1 "$work/survivors.txt")
        else
            rm -rf "$work" && mkdir -p "$work"
            git ls-files -z --cached --others --exclude-standard | grep -zv '^outputs/' | xargs -0 cp --parents -t "$work"
            {
                echo "[mutmut]"
                echo "source_paths ="; for p in models server training; do echo "    $p"; done
                echo "only_mutate = $module"
                echo "also_copy ="; for p in bench worlds web scripts docs README.md; do echo "    $p"; done
                echo "pytest_add_cli_args_test_selection ="; for t in $tests; do echo "    $t"; done
                echo "pytest_add_cli_args = -p no:cacheprovider -p no:timeout -x -q"
                echo "process_isolation = forkserver"
                echo "use_git_change_detection = false"
                echo "timeout_multiplier = 3"
                echo "timeout_constant = 20"  # a loaded 2-core machine: a mutant that only runs slow is no timeout kill
            } > "$work/setup.cfg"
        fi
        pattern=""; [ "$names" = "*" ] || pattern="$names"
        echo "== $module: tests $tests"
        start=$(date +%s)
        # shellcheck disable=SC2086  # the globs are words of their own
        if [ ${#rerun[@]} -gt 0 ]; then set -- "${rerun[@]}"; elif [ -n "$pattern" ]; then set -f; set -- $pattern; set +f
        else set --; fi
        if [ "${MUTATION_SCORE_ONLY:-0}" != 1 ]; then
            (cd "$work" && "$python" -m mutmut run --max-children "${MUTATION_JOBS:-2}" "$@" > run.log 2>&1) \
                || { echo "$module: mutmut failed, see $work/run.log" >&2; tail -20 "$work/run.log" >&2; continue; }
            [ ${#rerun[@]} -gt 0 ] && cp "$work/results.txt" "$work/results.before.txt"
            (cd "$work" && "$python" -m mutmut results --all true > results.txt 2>&1)
            if [ ${#rerun[@]} -gt 0 ]; then  # mutmut reports the mutants it did not rerun as "not checked"
                "$python" - "$work" <<'PY'
import sys
from pathlib import Path
work = Path(sys.argv[1])
def read(name):
    return dict(line.strip().rsplit(": ", 1) for line in (work / name).read_text().splitlines() if ": " in line)
before, after = read("results.before.txt"), read("results.txt")
merged = {n: (before.get(n, s) if s == "not checked" else s) for n, s in after.items()}
(work / "results.txt").write_text("".join(f"    {n}: {s}\n" for n, s in merged.items()))
PY
            fi
        fi
        "$python" - "$work" "$module" "$pattern" "$(( $(date +%s) - start ))" "${equivalent[@]}" <<'PY'
import fnmatch, sys
from pathlib import Path
work, module, pattern, seconds, equivalent = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], set(sys.argv[5:])
rows = [line.strip().rsplit(": ", 1) for line in (work / "results.txt").read_text().splitlines() if ": " in line]
rows = [(n, s) for n, s in rows if not pattern or any(fnmatch.fnmatch(n, p) for p in pattern.split())]
killed = [n for n, s in rows if s in ("killed", "timeout", "segfault")]
accepted = [n for n, s in rows if s not in ("killed", "timeout", "segfault") and n in equivalent]
survivors = [(n, s) for n, s in rows if s not in ("killed", "timeout", "segfault") and n not in equivalent]
(work / "survivors.txt").write_text("".join(f"{n}: {s}\n" for n, s in survivors))
scored = len(rows) - len(accepted)
score = 100.0 * len(killed) / scored if scored else 0.0
print(f"{module}: {score:.1f}% ({len(killed)} killed of {scored}; {len(accepted)} equivalent excluded, "
      f"{len(survivors)} survived) in {seconds} s")
for n, s in survivors:
    print(f"    {s:10s} {n}")
PY
    done
}

main "$@"
