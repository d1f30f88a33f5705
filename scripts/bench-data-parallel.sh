#!/usr/bin/env bash
# Step time of data-parallel training (`gpus: k`) for k = 1 and k = 2 CPU replicas at the same
# global batch, for the quickstart's `tiny` preset (vocab 5000, batch 16, seq 64) and a larger
# shape (hidden 256, 4 layers), random init, full fine-tuning. Each run is its own process.
# Thread settings (RAYON_NUM_THREADS, shared by all replicas of the process):
#   k=1 on 1 thread   a gpus: 1 trial's share when two trials run at once on 2 cores
#   k=1 on all        one trial alone on the machine
#   k=2 on all        a gpus: 2 trial as the orchestrator starts it (threads = its 2 slots' cores)
#   k=2 on 1 thread   each replica computing on its own core (candle's pools single-threaded)
# Usage: scripts/bench-data-parallel.sh [threads] [repeats]   (default: all cores, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-$(nproc)}"
repeats="${2:-3}"
cargo build --release --example data_parallel_speed
bin="${CARGO_TARGET_DIR:-target}/release/examples/data_parallel_speed"
run() { RAYON_NUM_THREADS="$1" CANDLE_NUM_THREADS="$1" "$bin" "${@:2}"; }
for _ in $(seq "$repeats"); do
  for shape in "tiny 20" "256x4 8"; do
    set -- $shape
    run 1 1 "$1" sft 16 64 "$2" 5000
    run "$threads" 1 "$1" sft 16 64 "$2" 5000
    run "$threads" 2 "$1" sft 16 64 "$2" 5000
    run 1 2 "$1" sft 16 64 "$2" 5000
  done
done
