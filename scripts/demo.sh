#!/usr/bin/env bash
# The main job end to end on the embedded synthetic dataset (called by `make demo`).
# Usage: scripts/demo.sh OUTDIR      (the venv's bin must be on PATH; make demo does that)
set -euo pipefail
out=${1:-out/demo}
mkdir -p "$out"
log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

log "1/4 generate + convert the synthetic DAGM-like dataset"
version_dir=$(datatool convert synthetic --raw "$out/raw/synthetic" --out "$out/data" | tail -n 1)
echo "dataset: $version_dir"

log "2/4 validate"
datatool validate "$version_dir"

log "3/4 report"
report=$(datatool report "$version_dir" | tail -n 1)

log "4/4 list"
datatool list "$out/data"

log "outputs"
echo "raw images:     $out/raw/synthetic"
echo "dataset:        $version_dir"
echo "dataset report: $report"
