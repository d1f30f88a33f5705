#!/usr/bin/env bash
# The memory estimate (`sweep plan`'s "memory MiB" column) against the peak resident memory each
# real trial measured (VmHWM), over methods and batch sizes: the tiny base
# (sweeps/memory-validation.yaml), then the 135M shape with a chat template at micro-batch 1, 2
# and 8, sft and LoRA (sweeps/memory-validation-135m.yaml; its model folder is made by
# scripts/make-random-135m.py with the benchmark venv), then the same sweep on the same shape in
# each other family sweep builds (qwen3, ernie4_5, mistral: `make-random-135m.py --arch new`
# makes their folders). Prints one line per trial and the mean and worst relative error per sweep.
# Usage: scripts/validate-memory.sh [OUT_DIR] [WHICH]   (default /tmp/sweep-memory-validation all)
#   WHICH: tiny, 135m (llama), qwen3, ernie4_5, mistral, new (the three), all (every one)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/sweep-memory-validation}"
which="${2:-all}"
case $which in
    all) archs=(llama qwen3 ernie4_5 mistral) ;;
    135m | llama) archs=(llama) ;;
    new) archs=(qwen3 ernie4_5 mistral) ;;
    qwen3 | ernie4_5 | mistral) archs=("$which") ;;
    tiny) archs=() ;;
    *)
        echo "unknown WHICH \`$which\` (tiny, 135m, qwen3, ernie4_5, mistral, new, all)" >&2
        exit 2
        ;;
esac
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
# The 135M sweep on the model folder of `arch` (llama: SmolLM2's own shape).
run_135m() {
    local arch=$1 model=models/random-135m-chat
    [[ $arch == llama ]] || model=models/random-135m-$arch-chat
    [[ -f $model/config.json ]] || {
        echo "$model missing: ~/.cache/sweep/bench-venv/bin/python scripts/make-random-135m.py --arch $arch" >&2
        exit 1
    }
    sed -e "s|MEMORY_DATA|$out/data|" -e "s|models/random-135m-chat|$model|" \
        sweeps/memory-validation-135m.yaml > "$out/135m-$arch.yaml"
    "$out/sweep" run "$out/135m-$arch.yaml" --quiet --out "$out/135m-$arch" > /dev/null
    echo "$arch ($model):"
    table "$out/135m-$arch"
}

head -64 data/clinc150-mini/train.json > "$out/data/train.json"
head -32 data/clinc150-mini/dev.json > "$out/data/dev.json"
for arch in "${archs[@]}"; do
    run_135m "$arch"
done
