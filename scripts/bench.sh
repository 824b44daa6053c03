#!/usr/bin/env bash
# Every benchmark, each against its baseline measured in the same run (called by `make bench`).
# Writes JSON figures and a Markdown summary under OUTDIR.
set -euo pipefail
out=${1:-out/bench}
mkdir -p "$out"
summary="$out/summary.md"
{
  echo "Benchmarks ($(date -u +%Y-%m-%d), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo
  echo "| what | ours | baseline | ratio |"
  echo "|---|---|---|---|"
} > "$summary"

echo "== datatools: conversion throughput" >&2
python scripts/bench_datatools.py --images 2000 --size 512 --out "$out/datatools.json" | tee -a "$summary"

if [ -f scripts/bench_training.py ]; then
  echo "== asset: training throughput, Lightning vs plain loop" >&2
  python scripts/bench_training.py --out "$out/training.json" | tee -a "$summary"
fi

if [ -f scripts/bench_inference.py ]; then
  echo "== asset: inference backends vs baselines (bare ONNX Runtime, PyTorch eager, FP32, FLOP floor)" >&2
  python scripts/bench_inference.py --out "$out/inference.json" | tee -a "$summary"
fi

if [ -f scripts/bench_server.py ]; then
  echo "== asset: HTTP server vs the bare backend (same model, same image)" >&2
  python scripts/bench_server.py --workloads dagm512,rgb256 --out "$out/server.json" | tee -a "$summary"
fi

echo >&2
cat "$summary"
python scripts/update_readme_bench.py "$summary" README.md
echo "README.md performance section updated from $summary" >&2
