#!/usr/bin/env bash
# The four methods side by side on one base: sft and lora (the model writes the label after the
# system prompt; evaluation scores every label) against classifier and classifier_lora (a linear
# head over the last prompt token; one forward per dev example), on the 150-intent CLINC set and
# on a Chinese short-text set in the seed's format (THUCNews titles, 10 classes listed in Chinese
# in every line's system prompt). For each (set, method): dev accuracy, training seconds per epoch
# (evaluations excluded), seconds per evaluation of the dev set, peak memory, as one table; plus a
# character uni+bigram logistic regression on each set (scikit-learn), the baseline a head method
# from the tiny preset should beat on the Chinese set.
#
# Each (set, method) is its own sweep of one trial with the whole machine (parallel 1), so the
# timings do not share cores; results land in OUT/SET/METHOD/results (results.csv, report.html),
# the table in OUT/table.md and OUT/table.json. At the defaults it runs in minutes on a CPU; the
# knobs below make it bigger.
#
# Usage: scripts/bench-methods.sh [OUT]            (default OUT: results/bench-methods)
# Knobs (environment):
#   METHODS="sft lora classifier classifier_lora"   the methods to run (each must be a `method`)
#   SETS="clinc150 thucnews"                        the sets
#   CLINC_DATA=../shared/data/clinc150              train.json and dev.json, 150 intents
#   THUC_DATA=../sweep-data/thucnews-titles         made by scripts/make-chinese-data.py; with
#                                                   THUC_SOURCE=<clone of 649453932/Chinese-Text-
#                                                   Classification-Pytorch> it is made when missing
#   CLINC_TRAIN=1500 CLINC_DEV=300                  lines taken, balanced over labels (0: all;
#   THUC_TRAIN=0     THUC_DEV=0                     CLINC has 15,000 and 3,000, THUCNews 10,000 and 2,000)
#   CLINC_MODEL=models/tiny-base   THUC_MODEL=preset:tiny   a model folder, or preset:NAME
#                                                   (THUC_MODEL=models/tiny-base-zh: the preset
#                                                   post-pretrained on unlabelled Chinese titles,
#                                                   made by scripts/make-tiny-base-zh.sh)
#   EPOCHS=3 BATCH=16 LORA_RANK=8 WARMUP=0.05 SEED=1 WEIGHT_DECAY=0
#   LR_SFT=3e-3 LR_LORA=1e-2 LR_CLASSIFIER=3e-3 LR_CLASSIFIER_LORA=5e-3
#   SYSTEM_PROMPT=drop                              data.system_prompt: drop (the head methods
#                                                   read the query alone; sft and lora keep the
#                                                   list of classes) or keep (every method reads
#                                                   it: a last-token head behind CLINC's 600-token
#                                                   list stays at chance on models/tiny-base)
#   DEVICES=cpu (or cuda)   SLOTS=1                 resources of each sweep
#   PYTHON=~/.cache/sweep/bench-venv/bin/python     has scikit-learn (for the baseline)
#   BASELINE=1                                      0 skips the baseline
#   SWEEP=<a sweep binary>                          default: built here (cargo build --release)
#                                                   and copied into OUT (with a target folder
#                                                   others build into too, give your own copy)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
out="$(mkdir -p "${1:-results/bench-methods}" && cd "${1:-results/bench-methods}" && pwd)"

first_dir() { for d in "$@"; do [ -d "$d" ] && { echo "$d"; return; }; done; echo "$1"; }
methods="${METHODS:-sft lora classifier classifier_lora}"
sets="${SETS:-clinc150 thucnews}"
clinc="${CLINC_DATA:-$(first_dir ../shared/data/clinc150 ../../shared/data/clinc150)}"
thuc="${THUC_DATA:-$(first_dir ../sweep-data/thucnews-titles ../../sweep-data/thucnews-titles)}"
python="${PYTHON:-$HOME/.cache/sweep/bench-venv/bin/python}"
[ -x "$python" ] || python="python3"
helper="$repo/scripts/bench_methods.py"

if [ -n "${SWEEP:-}" ]; then
  sweep="$SWEEP"
else
  cargo build --release --bin sweep
  # A private copy: a shared target folder's binary may be rebuilt by someone else meanwhile.
  sweep="$out/sweep"
  cp "${CARGO_TARGET_DIR:-target}/release/sweep" "$sweep"
fi

lr_of() {
  case "$1" in
    sft) echo "${LR_SFT:-3e-3}" ;;
    lora) echo "${LR_LORA:-1e-2}" ;;
    classifier) echo "${LR_CLASSIFIER:-3e-3}" ;;
    classifier_lora) echo "${LR_CLASSIFIER_LORA:-5e-3}" ;;
    *) echo "${LR:-3e-3}" ;;
  esac
}

model_yaml() {
  case "$1" in
    preset:*) echo "{preset: ${1#preset:}}" ;;
    /*) echo "{path: $1}" ;;
    *) echo "{path: $repo/$1}" ;;
  esac
}

# One set: its subsets, the baseline, and one sweep per method.
bench_set() {
  local name="$1" data="$2" n_train="$3" n_dev="$4" model="$5"
  local dir="$out/$name"
  mkdir -p "$dir"
  if [ ! -f "$data/train.json" ] || [ ! -f "$data/dev.json" ]; then
    echo "$name: no train.json and dev.json in $data (see the knobs at the top of $0)" >&2
    return 1
  fi
  "$python" "$helper" subset "$data/train.json" "$dir/train.json" "$n_train" 1
  "$python" "$helper" subset "$data/dev.json" "$dir/dev.json" "$n_dev" 2
  if [ "${BASELINE:-1}" != 0 ]; then
    if "$python" -c "import sklearn" 2>/dev/null; then
      "$python" "$helper" baseline "$dir/train.json" "$dir/dev.json" "$dir/baseline.json"
    else
      echo "$name: no scikit-learn in $python: baseline skipped (PYTHON=...)" >&2
    fi
  fi
  for method in $methods; do
    local run="$dir/$method"
    rm -rf "$run/results"
    mkdir -p "$run"
    cat > "$run/sweep.yaml" <<EOF
# Written by scripts/bench-methods.sh: $name, $method.
name: bench-$name-$method
data:
  train: $dir/train.json
  dev: $dir/dev.json
  system_prompt: ${SYSTEM_PROMPT:-drop}
model: $(model_yaml "$model")
output: $run/results
method: grid
seed: ${SEED:-1}
metric: {name: accuracy, goal: maximize}
parameters:
  method:        {value: $method}
  learning_rate: {value: $(lr_of "$method")}
  epochs:        {value: ${EPOCHS:-3}}
  batch_size:    {value: ${BATCH:-16}}
  lora_rank:     {value: ${LORA_RANK:-8}}
  lora_alpha:    {value: $(( 2 * ${LORA_RANK:-8} ))}
  warmup:        {value: ${WARMUP:-0.05}}
  weight_decay:  {value: ${WEIGHT_DECAY:-0.0}}
resources:
  devices: ${DEVICES:-cpu}
  slots: ${SLOTS:-1}
  parallel: 1
EOF
    echo "== $name: $method (lr $(lr_of "$method"))"
    local start=$SECONDS
    if ! "$sweep" run "$run/sweep.yaml" --quiet > "$run/run.log" 2>&1; then
      echo "$name: $method failed; the last lines of $run/run.log:" >&2
      tail -n 15 "$run/run.log" >&2
    fi
    echo "   $(( SECONDS - start )) s"
  done
}

for set in $sets; do
  case "$set" in
    clinc150) bench_set clinc150 "$clinc" "${CLINC_TRAIN:-1500}" "${CLINC_DEV:-300}" \
      "${CLINC_MODEL:-models/tiny-base}" || true ;;
    thucnews)
      if [ ! -f "$thuc/train.json" ] && [ -n "${THUC_SOURCE:-}" ]; then
        python3 scripts/make-chinese-data.py "$THUC_SOURCE" "$thuc"
      fi
      bench_set thucnews "$thuc" "${THUC_TRAIN:-0}" "${THUC_DEV:-0}" \
        "${THUC_MODEL:-preset:tiny}" || true ;;
    *) echo "unknown set $set (known: clinc150 thucnews)" >&2; exit 2 ;;
  esac
done

echo
"$python" "$helper" table "$out"
