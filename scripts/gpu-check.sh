#!/usr/bin/env bash
# The GPU check of the CUDA and TensorRT paths on a machine with an NVIDIA GPU, from a clean checkout: makes the environment, then
# runs scripts/gpu_check.py (demo model + MobileNetV2-Unet/-PAN at 512x512; onnx, onnx-int8 and TensorRT
# fp32/fp16/int8 exports with their parity gates; batch 1 and 8 against PyTorch eager and ONNX Runtime's CUDA /
# TensorRT providers on the same GPU; one Markdown table and the verdict against the A100 goal).
# Usage: scripts/gpu-check.sh [--model DEMO_MODEL_DIR] [--archs unet,pan,linknet] [--out DIR] [...]
#   (every argument goes to scripts/gpu_check.py; --help lists them)
# Environment: VENV (default .venv-gpu; an existing one that already imports everything is used as it is,
#   without the network), PYTHON (default python3, >= 3.11).
# Exit status: 0 all passed, 1 an export or a timing failed, 2 no GPU / no TensorRT here (nothing was done).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
PYTHON=${PYTHON:-python3}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi is missing or finds no GPU): run this on a machine with an" \
       "NVIDIA GPU and its driver (in a container: --gpus all)" >&2
  exit 2
fi
nvidia-smi -L >&2

ready() {  # the venv imports everything the check needs, with the GPU providers
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PY' 2>/dev/null
import onnxruntime, tensorrt, torch, onnxconverter_common, cuda.bindings.runtime, asset, datatools  # noqa: F401
assert "CUDAExecutionProvider" in onnxruntime.get_available_providers()
PY
}
if ! ready; then
  echo "gpu-check: making $VENV (pinned requirements + platforms/x86-cuda/requirements-gpu.txt)" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" -r datatools/requirements.txt -r asset/requirements.txt
  "$VENV/bin/python" -m pip uninstall --quiet -y onnxruntime  # onnxruntime-gpu provides the same module
  "${pip[@]}" -r platforms/x86-cuda/requirements-gpu.txt
  editable=(-e ./datatools)
  if [ -f asset/pyproject.toml ]; then editable+=(-e ./asset); fi
  "${pip[@]}" --no-deps "${editable[@]}"
  ready || { echo "gpu-check: $VENV still cannot import TensorRT / onnxruntime-gpu (see pip's output above)" >&2; exit 2; }
fi
export PATH="$PWD/$VENV/bin:$PATH" HF_HUB_OFFLINE=1
exec "$VENV/bin/python" scripts/gpu_check.py "$@"
