#!/usr/bin/env bash
# Smarter search, measured: one search space (sweeps/bench-search.yaml, 40 grid points) searched
# by real `sweep run`s on the bundled CLINC150 data as
#   grid (once: the reference), random (run_cap 13, about a third of the grid), bayes (run_cap 13),
#   random + hyperband and bayes + hyperband (run_cap 16, early_terminate min_iter 2, eta 2,
#   judging accuracy, the sweep's metric), and the same two judging dev_loss
#   (`early_terminate.metric: dev_loss`), each but the grid over the sampler seeds 1, 2, 3. Prints per method the best dev accuracy
# found (median over seeds), its gap to the grid's best, and the trial-steps spent (the sum of
# every trial's optimizer steps, from results.csv's `steps`) as a fraction of the grid's.
# Accuracy and steps do not depend on the machine's load: trials are seeded and deterministic.
#
# Usage: scripts/bench-search.sh [OUT_DIR]        (default: results/bench-search)
#        scripts/bench-search.sh --table [OUT_DIR] (only the table, from finished runs)
# Needs models/tiny-base (scripts/make-tiny-base.sh). Runs that ended are kept: rerunning the
# script resumes or skips them. Took 51 min of wall time on 2 cores shared with other jobs (load
# average 10 to 20), two runs at a time for part of it.
set -euo pipefail
cd "$(dirname "$0")/.."
table_only=0
if [[ "${1:-}" == "--table" ]]; then
    table_only=1
    shift
fi
out="$(mkdir -p "${1:-results/bench-search}" && cd "${1:-results/bench-search}" && pwd)"
seeds=(1 2 3)

table() {
    python3 - "$out" "${seeds[@]}" <<'PY'
import csv, statistics, sys, os
out, seeds = sys.argv[1], sys.argv[2:]
def read(name):
    path = os.path.join(out, name, "results.csv")
    journal = os.path.join(out, name, "journal.jsonl")
    # Only runs that ended: a run still going (or interrupted) would undercount.
    if not os.path.exists(path) or '"sweep_finished"' not in open(journal).read():
        return None
    rows = list(csv.DictReader(open(path)))
    ranked = [r for r in rows if r["status"] in ("finished", "pruned") and r["accuracy"]]
    if not ranked:
        return None
    best = max(float(r["accuracy"]) for r in ranked)
    steps = sum(int(r["steps"]) for r in rows if r.get("steps"))
    pruned = sum(1 for r in rows if r["status"] == "pruned")
    return best, steps, len(rows), pruned
grid = read("grid")
if grid is None:
    sys.exit("no finished grid run in " + out)
print(f"grid: best dev accuracy {grid[0]:.3f}, {grid[1]} trial-steps, {grid[2]} trials")
print()
print("| search | seeds | trials | pruned | best dev accuracy (median) | gap to grid (points) | trial-steps / grid's (median) |")
print("|---|---|---|---|---|---|---|")
print(f"| grid | - | {grid[2]} | 0 | {grid[0]:.3f} | 0.0 | 1.00 |")
for name in ["random", "bayes", "random-hyperband", "bayes-hyperband",
             "random-hyperband-devloss", "bayes-hyperband-devloss"]:
    runs = [r for r in (read(f"{name}-seed{s}") for s in seeds) if r is not None]
    if not runs:
        continue
    best = statistics.median(r[0] for r in runs)
    frac = statistics.median(r[1] / grid[1] for r in runs)
    each = ", ".join(f"{r[0]:.3f}" for r in runs)
    print(f"| {name} | {len(runs)} | {statistics.median(r[2] for r in runs):.0f} | "
          f"{statistics.median(r[3] for r in runs):.0f} | {best:.3f} ({each}) | "
          f"{100 * (grid[0] - best):.1f} | {frac:.2f} |")
PY
}

if [[ $table_only == 1 ]]; then
    table
    exit 0
fi

[[ -f models/tiny-base/config.json ]] || { echo "models/tiny-base missing: run scripts/make-tiny-base.sh" >&2; exit 1; }
cargo build --release
mkdir -p "$out/data"
# A copy: every run uses the same binary, whatever is rebuilt meanwhile.
cp "${CARGO_TARGET_DIR:-target}/release/sweep" "$out/sweep.new"
mv "$out/sweep.new" "$out/sweep"
bin="$out/sweep"
head -240 data/clinc150-mini/train.json > "$out/data/train.json"
head -100 data/clinc150-mini/dev.json > "$out/data/dev.json"

# One sweep file per run, from the template: NAME, METHOD, RUN_CAP ("" for none), SEED,
# HYPERBAND (0: none, 1: judging the sweep's metric, 2: judging dev_loss).
run() {
    local name=$1 method=$2 run_cap=$3 seed=$4 hyperband=$5
    local spec="$out/$name.yaml"
    if [[ -f "$out/$name/results.csv" ]] && grep -q sweep_finished "$out/$name/journal.jsonl"; then
        echo "$name: done already"
        return
    fi
    sed -e "s|BENCH_DATA|$out/data|" -e "s|^name: bench-search|name: $name|" \
        -e "s|^method: grid|method: $method|" -e "s|^seed: 1|seed: $seed|" \
        sweeps/bench-search.yaml > "$spec"
    echo "output: $out/$name" >> "$spec"
    [[ -n $run_cap ]] && echo "run_cap: $run_cap" >> "$spec"
    case $hyperband in
        1) echo "early_terminate: {type: hyperband, min_iter: 2, eta: 2}" >> "$spec" ;;
        2) echo "early_terminate: {type: hyperband, min_iter: 2, eta: 2, metric: dev_loss}" >> "$spec" ;;
    esac
    local resume=()
    [[ -f "$out/$name/journal.jsonl" ]] && resume=(--resume)
    local t0=$SECONDS
    if "$bin" run "$spec" --quiet "${resume[@]}" > "$out/$name.log" 2>&1; then
        echo "$name: $((SECONDS - t0)) s"
    else
        echo "$name: failed, see $out/$name.log (rerun the script to resume it)"
    fi
}

run grid grid "" 1 0
for seed in "${seeds[@]}"; do
    run "random-hyperband-devloss-seed$seed" random 16 "$seed" 2
    run "bayes-hyperband-devloss-seed$seed" bayes 16 "$seed" 2
done
for seed in "${seeds[@]}"; do
    run "random-seed$seed" random 13 "$seed" 0
    run "bayes-seed$seed" bayes 13 "$seed" 0
    run "random-hyperband-seed$seed" random 16 "$seed" 1
    run "bayes-hyperband-seed$seed" bayes 16 "$seed" 1
done
table
