#!/usr/bin/env bash
# The seed's shape, measured: CLINC150 with all 150 intents listed in the system prompt of every
# line (as the seed's user writes it), training tokens/s and evaluation seconds per dev example,
# plain (every example computes the whole prompt; every (example, label) scored whole) against
# shared-prefix training and prefix-shared scoring, for the `tiny` preset and the 135M llama shape,
# random init, on the CPU. A few steps only. Also the search for the best label (what a trial's
# evaluation runs) and the best three, whose cost depends on how sure the model is: the `tiny` row first
# trains WARM untimed steps (default 100 of batch 8, 800 lines) so it has learned something.
# Each line ends with the fraction of one epoch's time (every train line once, every dev line
# scored) that evaluation takes, each way of scoring. One JSON line per model.
# Usage: scripts/bench-prefix.sh [DATA_DIR]   (default: ../shared/data/clinc150, with train.json
# and dev.json in the seed's format; see its SOURCE.md)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/clinc150}"
cargo build --release --example prefix_speed
bin="${CARGO_TARGET_DIR:-target}/release/examples/prefix_speed"
# tiny: batch 8, 3 steps, 20 dev examples, every label scored whole; WARM steps before scoring.
"$bin" "$data" tiny 8 3 20 150 "${WARM:-100}"
# 135M: batch 2, 1 step, 2 dev examples; the plain scoring of 3 labels, scaled to 150.
"$bin" "$data" llama-135m 2 1 2 3
