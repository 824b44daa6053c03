"""`asset export --format tensorrt` without torch: the engine is built from the model directory's ONNX export on
the device (the Jetson image has no torch). TensorRT cannot be installed on these machines, so the tests run the
real command up to where TensorRT is needed, with torch made unimportable, and test the torch-free verification
(against the ONNX export under ONNX Runtime) with real ONNX Runtime sessions. The build itself, against fake
TensorRT / cuda-python modules: test_trt_build.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asset import modeldir
from asset.algorithm import Algorithm
from asset.backends import backend_status, cuda_device_count, load_backend
from asset.export import ExportError
from asset.export import tensorrt as T
from tests import REPO
from tests.asset.backend_helpers import copy_model, make_model_dir, shared

TORCH = ("torch", "lightning", "pytorch_lightning", "torchvision", "torchmetrics", "segmentation_models_pytorch",
         "timm")
# Runs the asset CLI with BLOCKED modules unimportable; fails if torch & co. were imported all the same.
RUN_BLOCKED = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from asset.cli import main
code = main(sys.argv[2:])
leaked = [m for m in BLOCKED & set(sys.modules)]
if leaked:  # a blocked module that got in some other way
    raise SystemExit(f"imported without need: {leaked}")
sys.exit(code)
"""


def run_blocked(blocked, *args, pythonpath=()):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, pythonpath)])}
    return subprocess.run([sys.executable, "-c", RUN_BLOCKED, ",".join(blocked), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def files(d: Path) -> dict[str, int]:
    return {p.relative_to(d).as_posix(): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


@pytest.fixture
def onnx_model(tmp_path):
    return copy_model(shared()["model"], tmp_path / "m")  # onnx, onnx-int8 and openvino exports


def test_export_reaches_the_tensorrt_check_without_torch(onnx_model):
    before = files(onnx_model)
    r = run_blocked((*TORCH, "tensorrt"), "export", "--model", str(onnx_model), "--format", "tensorrt")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: TensorRT is not installed: engines are built where they run"), r.stderr
    assert "Traceback" not in r.stderr and "blocked" not in r.stderr
    assert files(onnx_model) == before  # nothing staged, nothing recorded


def test_cuda_python_is_checked_too(onnx_model, tmp_path):
    fake = tmp_path / "site"  # a tensorrt package that can be found: the next check is cuda-python
    (fake / "tensorrt").mkdir(parents=True)
    (fake / "tensorrt" / "__init__.py").write_text("raise ImportError('stand-in: never imported by the checks')\n")
    r = run_blocked((*TORCH, "cuda"), "export", "--model", str(onnx_model), "--format", "tensorrt",
                    "--precision", "fp32", pythonpath=[fake])
    assert r.returncode == 2 and r.stderr.startswith("error: cuda-python is not installed"), r.stderr
    script = ("import sys, importlib.abc\n"
              "class B(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name.split('.')[0] == 'cuda': raise ImportError('blocked')\n"
              "sys.meta_path.insert(0, B())\n"
              "from asset.backends import backend_status\nprint(backend_status()['tensorrt'])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(fake)])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.startswith("not installed (cuda-python missing: "), out.stdout + out.stderr
    if cuda_device_count() == 0:  # both present: the GPU is what is missing here
        r = run_blocked(TORCH, "export", "--model", str(onnx_model), "--format", "tensorrt", pythonpath=[fake])
        assert r.returncode == 2 and r.stderr.startswith("error: no CUDA GPU visible"), r.stderr


def test_model_without_an_onnx_export_is_told_how_to_make_one(tmp_path):
    m = make_model_dir(tmp_path / "bare", shared()["dataset"])
    before = files(m)
    r = run_blocked((*TORCH, "tensorrt"), "export", "--model", str(m), "--format", "tensorrt")
    assert r.returncode == 2, r.stderr
    assert f"{m} has no ONNX export (model.json exports['onnx'])" in r.stderr
    assert f"asset export --model {m} --format onnx" in r.stderr and "Traceback" not in r.stderr
    assert files(m) == before


def test_onnx_options_do_not_apply_to_an_engine(onnx_model, capsys):
    from asset.cli import main

    assert main(["export", "--model", str(onnx_model), "--format", "tensorrt", "--opset", "17"]) == 2
    assert "--opset shape the ONNX export; the engine is built from exports/model.onnx" in capsys.readouterr().err


def test_tensorrt_status_names_what_is_missing():
    reason = backend_status()["tensorrt"]
    why = T.tensorrt_missing()
    if why is None:
        pytest.skip("this machine can build TensorRT engines")
    assert reason is not None and why.split(" ")[0] in ("TensorRT", "cuda-python", "onnxruntime", "no")


def test_verification_inputs_dataset_or_random(onnx_model, tmp_path):
    card = modeldir.verify(onnx_model)
    split, items, images, masks = T.verification_inputs(card, None, 5, log=lambda m: None)
    assert split == "val" and len(items) == len(images) == len(masks) == 5
    moved = {**card, "dataset": {**card["dataset"], "path": str(tmp_path / "gone")}}
    said = []
    split, items, images, masks = T.verification_inputs(moved, None, 5, log=said.append)
    assert split is None and items == [] and masks is None and len(images) == T.RANDOM_IMAGES
    h, w = card["input"]["train_size"] if card["input"].get("train_size") else T.RANDOM_SIZE
    assert images[0].shape == (h, w) and images[0].dtype == np.uint8  # one channel, as the model takes
    assert "verifying on 8 random images" in said[0]
    again = T.random_images(moved)
    assert all(np.array_equal(a, b) for a, b in zip(images, again))  # the same inputs every run
    with pytest.raises(ExportError, match="cannot read --data"):
        T.verification_inputs(card, tmp_path / "gone", 5, log=said.append)


def test_verification_against_the_onnx_export(onnx_model):
    card = modeldir.verify(onnx_model)
    algorithm = Algorithm.from_card(card)
    ref = load_backend("onnxruntime", onnx_model, card=card, threads=1)
    int8 = load_backend("onnxruntime", onnx_model, precision="int8", card=card, threads=1)
    quiet = {"log": lambda m: None, "what": "tensorrt-fp32", "reference_name": T.REFERENCE}
    try:
        labelled = T.verification_inputs(card, None, 8, log=lambda m: None)
        random = (None, [], T.random_images(card), None)
        for inputs in (labelled, random):
            same = T.compare(ref.infer, ref.infer, algorithm, inputs, exact=True, atol=1e-2, max_drop=0.02,
                                   **quiet)
            assert same["passed"] and same["max_abs_diff"] == 0 and same["decisions_equal"] == same["images"]
            with pytest.raises(ExportError, match="failed verification against the ONNX export"):
                T.compare(lambda x: -ref.infer(x), ref.infer, algorithm, inputs, exact=True, atol=1e-2,
                                max_drop=0.02, **quiet)
        figures = T.compare(int8.infer, ref.infer, algorithm, labelled, exact=False, atol=1e-2, max_drop=1.0,
                                  **quiet)
        assert figures["inputs"] == f"{len(labelled[2])} val images" and "accuracy_change" in figures
        figures = T.compare(int8.infer, ref.infer, algorithm, random, exact=False, atol=1e-2, max_drop=1.0,
                                  **quiet)
        assert figures["inputs"] == "8 random images (no dataset here)" and "accuracy_change" not in figures
        with pytest.raises(ExportError, match="equal mask pixels"):
            T.compare(lambda x: -ref.infer(x), ref.infer, algorithm, random, exact=False, atol=1e-2,
                            max_drop=0.02, **quiet)
    finally:
        ref.close()
        int8.close()


def _pins(path: str) -> dict[str, str]:
    lines = (REPO / path).read_text().splitlines()
    return dict(line.split("#")[0].strip().split("==") for line in lines if "==" in line.split("#")[0])


def test_images_install_what_engines_are_built_and_run_with():
    """Engines are built on the device: both GPU images need cuda-python (the backend's GPU memory), onnx (the
    INT8 Q/DQ check) and onnxconverter-common (FP16 = the ONNX export converted to mixed precision)."""
    jetson, x86 = _pins("platforms/jetson/requirements-jetson.txt"), _pins("platforms/x86-cuda/requirements-gpu.txt")
    full = _pins("asset/requirements-train.txt")
    for pins in (jetson, x86):
        assert pins["cuda-python"] == "13.4.4" and pins["onnxconverter-common"] == "1.16.0"
    assert jetson["onnx"] == full["onnx"]  # the x86 image has onnx from asset/requirements-train.txt
    assert x86["tensorrt-cu12"] == "11.4.0.106" and "tensorrt" not in jetson  # JetPack's own TensorRT 10.x
    # the Jetson image installs its hash lock, made from requirements-jetson.txt (ci/lock.py)
    locked = dict(re.findall(r"^(\S+)==(\S+) \\$", (REPO / "platforms/jetson/requirements.lock").read_text(), re.M))
    assert all(locked[name] == version for name, version in jetson.items())
    assert "platforms/jetson/requirements.lock" in (REPO / "platforms/jetson/Dockerfile").read_text()
    assert "requirements-gpu.txt" in (REPO / "platforms/x86-cuda/Dockerfile").read_text()
