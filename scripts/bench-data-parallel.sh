#!/usr/bin/env bash
# Step time of data-parallel training (`gpus: k`) for k = 1 and k = 2 CPU replicas at the same
# global batch, for the quickstart's `tiny` preset (vocab 5000, batch 16, seq 64) and a larger
# shape (hidden 256, 4 layers), random init, full fine-tuning. Each run is its own process.
# k = 1 runs with 1 and with all threads (a trial's share at parallel 2, and the whole machine);
# k = 2 with all threads, as a `gpus: 2` trial gets them on a 2-slot pool.
# Usage: scripts/bench-data-parallel.sh [threads] [repeats]   (default: all cores, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-$(nproc)}"
repeats="${2:-3}"
cargo build --release --example data_parallel_speed
bin="${CARGO_TARGET_DIR:-target}/release/examples/data_parallel_speed"
run() { RAYON_NUM_THREADS="$1" CANDLE_NUM_THREADS="$1" "$bin" "${@:2}"; }
for _ in $(seq "$repeats"); do
  for model in "tiny 16 64 20" "256x4 16 64 10"; do
    set -- $model
    run 1 1 "$1" sft "$2" "$3" "$4" 5000
    run "$threads" 1 "$1" sft "$2" "$3" "$4" 5000
    run "$threads" 2 "$1" sft "$2" "$3" "$4" 5000
  done
done
