#!/usr/bin/env bash
# Smoke-test one built image *inside* the image, under QEMU for arm64, before anything is pushed.
# Usage: ci/test-image.sh TARGET IMAGE
set -euo pipefail
target=$1 image=$2
run() { docker run --rm --network none "$@"; }
case "$target" in
  datatool-*)
    run --entrypoint datatool "$image" --help >/dev/null
    mkdir -p ci/tmp
    run --entrypoint datatool --user "$(id -u):$(id -g)" -v "$PWD/ci/tmp:/data" "$image" convert synthetic --out /data \
        --train-per-class 4 --test-per-class 2 --size 64 | tail -n 1 ;;
  x86-cuda)
    run "$image" --help >/dev/null
    run --entrypoint python "$image" -c "import torch, segmentation_models_pytorch, onnxruntime, tensorrt" ;;
  x86-cpu|rpi4)
    run "$image" --help >/dev/null
    run --entrypoint python "$image" -c "import onnxruntime, asset.algorithm; import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not ship here'" ;;
  jetson)
    run "$image" --help >/dev/null
    run --entrypoint python3 "$image" -c "import onnxruntime, asset.algorithm" ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
echo "ok: $target"
