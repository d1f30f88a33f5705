#!/usr/bin/env bash
# Rebuilds models/tiny-base, the quickstart's pretrained base: a post_pretrain sweep of the `tiny`
# preset on unlabelled CLINC150 queries, then its best checkpoint copied into place.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf results/pretrain-tiny-base
cargo run --release -- run sweeps/pretrain-tiny-base.yaml
rm -rf models/tiny-base
mkdir -p models
cp -r results/pretrain-tiny-base/best/checkpoint models/tiny-base
cp results/pretrain-tiny-base/best/best.json models/tiny-base/provenance.json
echo "models/tiny-base written"
