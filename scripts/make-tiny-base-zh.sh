#!/usr/bin/env bash
# Builds models/tiny-base-zh, a Chinese base for the THUCNews titles set: a post_pretrain sweep of
# the `tiny` preset (sweeps/pretrain-tiny-base-zh.yaml) on unlabelled Chinese news titles, then
# its best checkpoint copied into place (as scripts/make-tiny-base.sh does for CLINC). The titles
# are made first by scripts/make-chinese-pretrain.py (see its notes: sources, licence, and the
# removal of every title that equals or contains a dev title); give SWEEP=<a sweep binary> to skip
# the build. About 30 minutes on two CPU cores. The folder is not committed (.gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
data=../sweep-data/zh-pretrain
if [ ! -f "$data/train.json" ] || [ ! -f "$data/dev.json" ]; then
  echo "no $data/train.json and dev.json: run scripts/make-chinese-pretrain.py first" >&2
  exit 2
fi
rm -rf results/pretrain-tiny-base-zh
if [ -n "${SWEEP:-}" ]; then
  "$SWEEP" run sweeps/pretrain-tiny-base-zh.yaml
else
  cargo run --release --bin sweep -- run sweeps/pretrain-tiny-base-zh.yaml
fi
rm -rf models/tiny-base-zh
mkdir -p models
cp -r results/pretrain-tiny-base-zh/best/checkpoint models/tiny-base-zh
cp results/pretrain-tiny-base-zh/best/best.json models/tiny-base-zh/provenance.json
cp "$data/provenance.json" models/tiny-base-zh/corpus.json
echo "models/tiny-base-zh written"
