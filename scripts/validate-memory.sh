#!/usr/bin/env bash
# The memory estimate (`sweep plan`'s "memory MiB" column) against the peak resident memory each
# real trial measured (VmHWM), over methods and batch sizes: the tiny base
# (sweeps/memory-validation.yaml), then the 135M shape with a chat template at micro-batch 1, 2
# and 8, sft and LoRA (sweeps/memory-validation-135m.yaml; its model folder is made by
# scripts/make-random-135m.py with the benchmark venv). Prints one line per trial and the mean
# and worst relative error per sweep.
# Usage: scripts/validate-memory.sh [OUT_DIR] [tiny|135m|all]   (default /tmp/sweep-memory-validation all)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/sweep-memory-validation}"
which="${2:-all}"
rm -rf "$out"
mkdir -p "$out/data"
cargo build --release
# A copy: every trial runs this binary, whatever is rebuilt meanwhile.
cp "${CARGO_TARGET_DIR:-target}/release/sweep" "$out/sweep"

table() {
    python3 - "$1/results.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "finished"]
errs = []
print(f"{'trial':>5} {'method':<14} {'batch':>5} {'micro':>5} {'estimated MiB':>13} {'measured MiB':>12} {'error':>7}")
for r in rows:
    est, got = float(r["estimated_mb"]), float(r["peak_rss_mb"])
    err = (est - got) / got
    errs.append(abs(err))
    micro = r.get("micro_batch") or r["batch_size"]
    print(f"{r['trial']:>5} {r['method']:<14} {r['batch_size']:>5} {micro:>5} {est:>13.0f} {got:>12.0f} {err:>+7.0%}")
print(f"mean |error| {sum(errs)/len(errs):.0%}, worst {max(errs):.0%} over {len(errs)} trials")
PY
}

if [[ $which == all || $which == tiny ]]; then
    "$out/sweep" run sweeps/memory-validation.yaml --quiet --out "$out/tiny" > /dev/null
    table "$out/tiny"
fi
if [[ $which == all || $which == 135m ]]; then
    [[ -f models/random-135m-chat/config.json ]] || {
        echo "models/random-135m-chat missing: ~/.cache/sweep/bench-venv/bin/python scripts/make-random-135m.py" >&2
        exit 1
    }
    head -64 data/clinc150-mini/train.json > "$out/data/train.json"
    head -32 data/clinc150-mini/dev.json > "$out/data/dev.json"
    sed "s|MEMORY_DATA|$out/data|" sweeps/memory-validation-135m.yaml > "$out/135m.yaml"
    "$out/sweep" run "$out/135m.yaml" --quiet --out "$out/135m" > /dev/null
    table "$out/135m"
fi
