#!/usr/bin/env bash
# The memory estimate (`sweep plan`'s "memory MiB" column) against the peak resident memory each
# real trial measured (VmHWM), over methods and batch sizes. Prints one line per trial and the
# mean and worst relative error.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/sweep-memory-validation}"
rm -rf "$out"
cargo run --release -- run sweeps/memory-validation.yaml --quiet --out "$out" > /dev/null
python3 - "$out/results.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "finished"]
errs = []
print(f"{'trial':>5} {'method':<14} {'batch':>5} {'estimated MiB':>13} {'measured MiB':>12} {'error':>7}")
for r in rows:
    est, got = float(r["estimated_mb"]), float(r["peak_rss_mb"])
    err = (est - got) / got
    errs.append(abs(err))
    print(f"{r['trial']:>5} {r['method']:<14} {r['batch_size']:>5} {est:>13.0f} {got:>12.0f} {err:>+7.0%}")
print(f"mean |error| {sum(errs)/len(errs):.0%}, worst {max(errs):.0%} over {len(errs)} trials")
PY
