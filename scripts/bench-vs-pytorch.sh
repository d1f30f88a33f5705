#!/usr/bin/env bash
# sweep's trainer beside PyTorch + transformers (+ PEFT) at the same shapes, threads and LoRA
# settings, one configuration per process, on the CPU. Prints one table with both and their ratio.
#
#   scripts/bench-vs-pytorch.sh [threads] [tiny|135m|all]     (defaults: 2, all)
#   REPEATS=3 scripts/bench-vs-pytorch.sh 2 135m   # each side 3 times, alternating; medians
#
# On a machine whose speed drifts (this project's 2-core one: 20 % and more between runs),
# REPEATS alternates the two sides and prints the median of each and of the per-pair ratios.
# The Python side runs in a venv built from PyPI (BENCH_VENV, default ~/.cache/sweep/bench-venv):
# torch, transformers and peft are benchmark tools only, never part of the product.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
which="${2:-all}"
venv="${BENCH_VENV:-$HOME/.cache/sweep/bench-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet torch transformers peft
fi
cargo build --release --example train_speed --quiet
bin="${CARGO_TARGET_DIR:-target}/release/examples/train_speed"
configs=()
case "$which" in
    tiny) configs=("tiny sft 16 64 20 512" "tiny lora 16 64 20 512") ;;
    135m) configs=("llama-135m sft 4 128 3 49152" "llama-135m lora 4 128 3 49152") ;;
    *) configs=("tiny sft 16 64 20 512" "tiny lora 16 64 20 512" "llama-135m sft 4 128 3 49152" "llama-135m lora 4 128 3 49152") ;;
esac
field() { "$venv/bin/python" -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
printf '%-11s %-5s %-9s %14s %16s %6s %11s %13s\n' shape method batch "sweep tok/s" "PyTorch tok/s" ratio "sweep MB" "PyTorch MB"
median() { "$venv/bin/python" -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
for c in "${configs[@]}"; do
    set -- $c
    as=() bs=() rs=()
    for _ in $(seq "${REPEATS:-1}"); do
        ours=$(RAYON_NUM_THREADS="$threads" "$bin" "$1" "$2" "$3" "$4" "$5" "$6")
        theirs=$(OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" "$venv/bin/python" scripts/bench_pytorch.py "$1" "$2" "$3" "$4" "$5" "$6" "$threads" 2>/dev/null)
        a=$(echo "$ours" | field tokens_per_sec)
        b=$(echo "$theirs" | field tokens_per_sec)
        as+=("$a") bs+=("$b") rs+=("$(echo "$a / $b" | bc -l)")
    done
    am=$(echo "$ours" | field peak_rss_mb)
    bm=$(echo "$theirs" | field peak_rss_mb)
    printf '%-11s %-5s %-9s %14.1f %16.1f %6.2f %11.0f %13.0f\n' "$1" "$2" "$3x$4" "$(median "${as[@]}")" "$(median "${bs[@]}")" "$(median "${rs[@]}")" "$am" "$bm"
done
echo "threads $threads; ${REPEATS:-1} run(s) each, medians; torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'); $(nproc) cores; $(date -u +%Y-%m-%d)"
