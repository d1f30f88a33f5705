#!/usr/bin/env bash
# Training speed (tokens/s) and peak memory, sft vs lora, for the quickstart's `tiny` preset and a
# 135M-parameter llama shape (SmolLM2-135M's: hidden 576, 30 layers, 9 heads, 3 kv heads, vocab
# 49152), random init, on the CPU. Each configuration runs in its own process.
# Usage: scripts/bench-speed.sh [threads]   (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-$(nproc)}"
cargo build --release --example train_speed
bin="${CARGO_TARGET_DIR:-target}/release/examples/train_speed"
run() { RAYON_NUM_THREADS="$threads" "$bin" "$@"; }
run tiny sft 16 64 20 3000
run tiny lora 16 64 20 3000
run llama-135m sft 4 128 3
run llama-135m lora 4 128 3
