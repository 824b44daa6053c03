"""`asset benchmark --speed-only`: what each platform image runs to report a device's figures, without the
training dataset (and here without torch): latency and FPS on random input at --size, one JSON per device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from asset import modeldir
from asset.backends import BackendError
from asset.benchmark import device_description, speed_size
from tests import REPO
from tests.asset.backend_helpers import copy_model, shared

NO_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "lightning", "torchvision", "segmentation_models_pytorch", "timm",
                                  "datatools"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from asset.cli import main
sys.exit(main(sys.argv[1:]))
"""


def asset(*args: str) -> subprocess.CompletedProcess:
    """The asset CLI as an edge image has it: no torch, no datatools."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def model_without_dataset(tmp_path_factory):
    """The shared exported model, its dataset path pointing nowhere (as on a device)."""
    m = copy_model(shared()["model"], tmp_path_factory.mktemp("speed") / "m")
    card = modeldir.verify(m)
    card["dataset"]["path"] = "/nonexistent/dataset"
    card["input"]["train_size"] = [32, 32]  # as `asset train` records it (this model was made without training)
    modeldir.write_card(m, card)
    return m


def test_speed_only_without_dataset_or_torch(model_without_dataset, tmp_path):
    out = tmp_path / "bench" / "this-device"
    r = asset("benchmark", "--model", str(model_without_dataset), "--speed-only", "--backends",
              "onnxruntime,onnxruntime:int8", "--size", "64x96", "--batch", "1,2", "--min-iter", "3",
              "--min-seconds", "0.05", "--threads", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["schema"] == "asset-benchmark-speed/1"
    assert doc["device"]["description"] and doc["machine"]["usable_cores"] >= 1
    assert doc["input"]["size"] == [64, 96] and doc["input"]["channels"] == 1
    rows = [(x["backend"], x["precision"], x["batch"], x["status"]) for x in doc["rows"]]
    assert rows == [("onnxruntime", "fp32", 1, "ok"), ("onnxruntime", "fp32", 2, "ok"),
                    ("onnxruntime", "int8", 1, "ok"), ("onnxruntime", "int8", 2, "ok")]
    for row in doc["rows"]:
        assert row["ms"] > 0 and row["fps"] > 0 and row["iterations"] >= 3
        assert row["extra"]["input_shape"] == [row["batch"], 1, 64, 96]
        assert row["accuracy"] is None  # speed only: nothing about the dataset
    assert doc["rows"][2]["file"] == "exports/model-int8.onnx"
    md = out.with_suffix(".md").read_text()
    assert "64x96 random input" in md and "| onnxruntime | int8 | 2 | ok |" in md
    assert "| onnxruntime | fp32 | 1 | ok |" in r.stdout


def test_default_targets_say_what_cannot_run_here(model_without_dataset, tmp_path):
    out = tmp_path / "all"
    r = asset("benchmark", "--model", str(model_without_dataset), "--speed-only", "--min-iter", "2",
              "--min-seconds", "0.01", "--threads", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    by = {(x["backend"], x["precision"]): x for x in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert by[("onnxruntime", "fp32")]["status"] == "ok" and by[("openvino", "fp32")]["status"] == "ok"
    assert by[("pytorch", "fp32")]["status"] == "unavailable"  # torch is blocked, as in the edge images
    assert by[("tensorrt", "fp16")]["status"] == "unavailable" or by[("tensorrt", "fp16")]["status"] == "failed"
    # size: the model's training size when --size is not given
    card = modeldir.verify(model_without_dataset)
    assert json.loads(out.with_suffix(".json").read_text())["input"]["size"] == card["input"]["train_size"]


@pytest.mark.parametrize("extra, message", [
    (["--data", "/d"], "--speed-only uses no dataset: --data do not apply"),
    (["--split", "test", "--limit", "3"], "--split, --limit do not apply"),
    (["--size", "64"], "--size must look like 512x512"),
    (["--out", "/proc/version/x"], "cannot write the results to /proc/version/x"),
])
def test_bad_requests(model_without_dataset, extra, message):
    r = asset("benchmark", "--model", str(model_without_dataset), "--speed-only", "--backends", "onnxruntime",
              "--min-iter", "1", "--min-seconds", "0", *extra)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_size_and_device_description(tmp_path):
    assert speed_size({"input": {"size_policy": {"size": [128, 160]}, "train_size": [32, 32]}}, None) == (128, 160)
    assert speed_size({"input": {"train_size": [32, 48]}}, (64, 64)) == (64, 64)
    with pytest.raises(BackendError, match="pass --size HxW"):
        speed_size({"input": {"size_policy": {"mode": "pad", "size": None}}}, None)
    root = tmp_path / "jetson"
    (root / "etc").mkdir(parents=True)
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, "
                                               "EABI: aarch64, DATE: Mon Aug 25 20:38:05 UTC 2025\n")
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Thor Developer Kit\x00")
    d = device_description(root)
    assert d["board"] == "NVIDIA Jetson AGX Thor Developer Kit"
    assert d["l4t"].startswith("R38 (release), REVISION: 2.0")
    assert d["description"].startswith("NVIDIA Jetson AGX Thor Developer Kit / L4T R38 (release) / ")
