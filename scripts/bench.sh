#!/usr/bin/env bash
# Every benchmark, each against its baseline measured in the same run (called by `make bench`).
# Writes JSON figures and a Markdown summary under OUTDIR, then the summary into README.md's performance table.
# Usage: scripts/bench.sh [OUTDIR] [--quick]
#   --quick (or QUICK=1): every script end to end at tiny sizes and a few iterations (`make bench-smoke`, and the
#   test tests/asset/test_benchmark_smoke.py): checks that each row is produced, its figures mean nothing; the
#   pages holding the table are found and rendered, never written.
set -euo pipefail
out=out/bench
quick=${QUICK:-}
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -*) echo "usage: scripts/bench.sh [OUTDIR] [--quick]" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
summary="$out/summary.md"
if [ -n "$quick" ]; then
  q=(--quick); dt=(--images 24 --size 64 --repeats 1); tr=(--size 64 --batch 2 --steps 1 --warmup 1 --rounds 1)
  workloads=dagm512,rgb256; title="Benchmarks, smoke run (--quick: tiny sizes, figures mean nothing)"
else
  q=(); dt=(--images 2000 --size 512); tr=(); workloads=dagm512,rgb256; title="Benchmarks"
fi
cpu=$( (grep -m1 'model name' /proc/cpuinfo 2>/dev/null || echo ": unknown CPU") | cut -d: -f2 | xargs)
{
  echo "$title ($(date -u +%Y-%m-%d), $(nproc) CPUs: $cpu; load average at the start $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown))"
  echo
  echo "| what | ours | baseline | ratio |"
  echo "|---|---|---|---|"
} > "$summary"

echo "== datatools: conversion throughput" >&2
python "$here/bench_datatools.py" "${dt[@]}" --out "$out/datatools.json" | tee -a "$summary"

echo "== asset: training throughput, Lightning vs plain loop" >&2
python "$here/bench_training.py" "${tr[@]}" --out "$out/training.json" | tee -a "$summary"

echo "== asset: inference backends vs baselines (bare ONNX Runtime, PyTorch eager, FP32, FLOP floor)" >&2
python "$here/bench_inference.py" "${q[@]}" --out "$out/inference.json" | tee -a "$summary"

echo "== asset: HTTP server vs the bare backend (same model, same image)" >&2
python "$here/bench_server.py" "${q[@]}" --workloads "$workloads" --out "$out/server.json" | tee -a "$summary"

{
  echo
  echo "FLOP floor = FLOPs of the network at the timed input (torch counter, checked against the ONNX graph) / the"
  echo "cores' peak (cores x FP32 FLOP or INT8 MAC per cycle of the microarchitecture x the highest clock the machine"
  echo "or, where it states no maximum, the fastest part of that microarchitecture allows: \`scripts/flops.py\`; each"
  echo "row names where its per-cycle width came from), with the floor at the rate of this run's"
  echo "fp32 GEMM beside it; a ratio >= 1 is how many times slower than that floor. Ratios between engines are measured"
  echo "in turns in one run; the load average above says how busy the machine was."
} >> "$summary"
echo >&2
cat "$summary"
if [ -n "$quick" ]; then  # the real pages keep the real run's table: the smoke run only finds and renders them
  python "$here/update_readme_bench.py" --check "$summary"
else
  python "$here/update_readme_bench.py" "$summary"
fi
