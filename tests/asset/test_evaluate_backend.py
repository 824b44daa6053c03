"""`asset evaluate --backend NAME[:PRECISION]`: any export scored like PyTorch, with the benchmark's figures."""

from __future__ import annotations

import json

import pytest

from asset import modeldir
from asset.cli import main
from tests.asset.backend_helpers import copy_model, shared

TARGETS = [("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


def test_evaluate_each_backend_gives_the_benchmark_figures(tmp_path):
    from asset.benchmark import run_benchmark

    m, data = shared()["model"], shared()["dataset"]
    doc = run_benchmark(m, TARGETS, split="test", data=str(data), min_iter=1, min_seconds=0, max_seconds=1)
    rows = {(r["backend"], r["precision"]): r for r in doc["rows"]}
    figures = {}
    for name, precision in TARGETS:
        out = tmp_path / f"{name}-{precision}"
        assert main(["evaluate", "--model", str(m), "--backend", f"{name}:{precision}", "--data", str(data),
                     "--split", "test", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        row = rows[(name, precision)]
        assert row["status"] == "ok", row
        b = metrics["backend"]
        assert (b["name"], b["precision"], b["file"]) == (name, precision, row["file"])
        assert isinstance(metrics["precision"], float)  # the classification precision, not the backend's
        assert metrics["images"] == doc["images"] and metrics["split"] == "test"
        assert (metrics["accuracy"], metrics["pixel_iou"]) == (row["accuracy"], row["pixel_iou"])
        assert set(metrics) >= {"precision", "recall", "confusion_matrix", "ap", "auroc", "mean_iou_defective"}
        report = (out / "report.md").read_text()
        assert report.startswith("# unet/mobilenet_v2") and (precision != "int8" or "onnxruntime int8" in report)
        figures[(name, precision)] = metrics
    # the ONNX file is PyTorch's network: same decisions, so the same image metrics
    cm = {k: figures[k]["confusion_matrix"] for k in TARGETS}
    assert cm[("pytorch", "fp32")] == cm[("onnxruntime", "fp32")]
    modeldir.verify(m)  # evaluating with --out leaves the model directory as it was


def test_missing_export_names_the_export_command(tmp_path, capsys):
    m = copy_model(shared()["model"], tmp_path / "m")
    card = modeldir.verify(m)
    del card["exports"]["onnx-int8"]
    modeldir.write_card(m, card)
    args = ["evaluate", "--model", str(m), "--data", str(shared()["dataset"]), "--out", str(tmp_path / "e")]
    assert main([*args, "--backend", "onnxruntime:int8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and f"asset export --model {m} --format onnx-int8" in err, err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("backend,needle", [
    ("onnxruntime:fp16", "runs fp32, int8, not 'fp16'"),
    ("tflite", "unknown backend 'tflite'"),
    ("onnxruntime,openvino", "one NAME[:PRECISION]"),
])
def test_bad_backend_refused(backend, needle, tmp_path, capsys):
    assert main(["evaluate", "--model", str(shared()["model"]), "--data", str(shared()["dataset"]), "--backend",
                 backend, "--out", str(tmp_path / "e")]) == 2
    assert needle in capsys.readouterr().err
