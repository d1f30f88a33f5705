#!/usr/bin/env bash
# What evaluation costs against training, as a trial runs both: seconds per evaluated dev
# example over seconds per trained example (examples/eval_vs_train.rs, eval and training
# alternated in one process, REPEATS times: on a shared machine the ratio is what holds).
#   (a) the 135M shape with a chat template (models/random-135m-chat, random weights: make it with
#       ~/.cache/sweep/bench-venv/bin/python scripts/make-random-135m.py), LoRA and sft, batch 8,
#       micro-batch 8 and 1, on the bundled 10-intent set;
#   (b) the 150-intent set (long labels, every class listed in each prompt), the tiny preset
#       after 100 untimed steps (a model not yet confident), sft and LoRA.
# Each configuration prints one JSON line per repeat and a summary with the median ratio.
# Usage: scripts/bench-eval.sh [CLINC150_DIR] [REPEATS]   (default ../shared/data/clinc150, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
data150="${1:-../shared/data/clinc150}"
repeats="${2:-3}"
cargo build --release --example eval_vs_train
bin="${CARGO_TARGET_DIR:-target}/release/examples/eval_vs_train"
[[ -f models/random-135m-chat/config.json ]] || {
    echo "models/random-135m-chat missing: ~/.cache/sweep/bench-venv/bin/python scripts/make-random-135m.py" >&2
    exit 1
}
for method in lora sft; do
    for micro in 8 1; do
        "$bin" models/random-135m-chat "$method" data/clinc150-mini 8 "$micro" 2 32 "$repeats" 0 --separate
    done
done
for method in sft lora; do
    "$bin" preset:tiny "$method" "$data150" 8 8 10 64 "$repeats" 100 --separate
done
