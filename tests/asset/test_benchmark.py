"""`asset benchmark`: one table + JSON with the machine, statuses with reasons, clear errors for bad requests."""

from __future__ import annotations

import json

import pytest

from asset.backends import backend_status
from asset.benchmark import Row, parse_targets, to_markdown
from asset.cli import main
from tests.asset.backend_helpers import copy_model, outlier_model, shared

HEADER = "| backend | precision | batch | status | size (MB) | accuracy | IoU | p50 ms | p90 ms | p99 ms | img/s |"


def test_benchmark_table_and_json(tmp_path, capsys):
    m = shared()["model"]
    out = tmp_path / "bench"
    assert main(["benchmark", "--model", str(m), "--backends", "pytorch,onnxruntime,onnxruntime:int8,openvino",
                 "--batch", "1,2", "--min-iter", "3", "--min-seconds", "0", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert HEADER in table
    doc = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").read_text() == to_markdown(doc)
    assert doc["schema"] == "asset-benchmark/1" and doc["reference"] == "pytorch"
    assert {"cpu", "usable_cores", "gpus", "versions", "isa"} <= set(doc["machine"])
    assert doc["machine"]["versions"]["onnxruntime"]
    rows = doc["rows"]
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == [
        (b, p, n) for b, p in [("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                               ("openvino", "fp32")] for n in (1, 2)]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["throughput"] > 0 and r["iterations"] >= 3
        assert r["size_mb"] > 0 and 0 <= r["accuracy"] <= 1 and 0 <= r["pixel_iou"] <= 1
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert len({(r["accuracy"], r["pixel_iou"]) for r in fp32}) == 1  # same predictions, same figures
    assert len(table.splitlines()) >= 10


def test_default_run_lists_every_backend_with_a_status(tmp_path):
    m = copy_model(shared()["model"], tmp_path / "m")
    from asset import modeldir

    card = modeldir.verify(m)
    del card["exports"]["openvino"]  # openvino then reads the ONNX file
    del card["exports"]["onnx-int8"]
    modeldir.write_card(m, card)
    from asset.benchmark import run_benchmark

    doc = run_benchmark(m, min_iter=2, min_seconds=0)
    by = {(r["backend"], r["precision"]): r for r in doc["rows"]}
    assert by[("onnxruntime", "fp32")]["status"] == "ok" and by[("openvino", "fp32")]["status"] == "ok"
    assert by[("openvino", "fp32")]["file"] == "exports/model.onnx"
    assert by[("onnxruntime", "int8")]["status"] == "failed"
    assert "asset export --model" in by[("onnxruntime", "int8")]["reason"]
    reason = backend_status()["tensorrt"]
    if reason:
        assert by[("tensorrt", "fp16")]["status"] == "unavailable" and by[("tensorrt", "fp16")]["reason"] == reason


def test_fp32_export_that_disagrees_with_pytorch_is_exported_but_wrong(tmp_path):
    """An ONNX file whose head bias was shifted (a corrupted or stale export): it runs, but decides otherwise."""
    import onnx
    from onnx import numpy_helper

    from asset import modeldir
    from asset.benchmark import run_benchmark

    m = copy_model(shared()["model"], tmp_path / "m")
    path = m / "exports" / "model.onnx"
    model = onnx.load(path)
    head = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    bias = next(i for i in model.graph.initializer if i.name == head.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 20.0, bias.name))  # every pixel a defect
    onnx.save(model, path)
    modeldir.write_card(m, modeldir.read_card_unverified(m))  # checksums over the changed file
    doc = run_benchmark(m, [("pytorch", "fp32"), ("onnxruntime", "fp32")], min_iter=2, min_seconds=0)
    by = {r["backend"]: r for r in doc["rows"]}
    assert by["pytorch"]["status"] == "ok" and doc["reference"] == "pytorch"
    wrong = by["onnxruntime"]
    assert wrong["status"] == "exported but wrong", wrong
    assert wrong["reason"].startswith("differs from pytorch: decisions equal ")
    assert wrong["accuracy"] < by["pytorch"]["accuracy"] and wrong["p50_ms"] > 0  # still measured
    assert "| onnxruntime | fp32 | 1 | exported but wrong: differs from pytorch" in to_markdown(doc)


def test_int8_export_let_through_by_a_loosened_gate_is_exported_but_wrong(tmp_path):
    """INT8 of a model with an activation outlier, exported with the gate switched off: the benchmark, at its
    default tolerance, still reports it."""
    from asset.benchmark import run_benchmark
    from asset.export import export_model

    m = outlier_model(tmp_path / "m")
    export_model(m, "onnx-int8", calib_images=8, max_accuracy_drop=1.0, log=lambda msg: None)
    doc = run_benchmark(m, [("onnxruntime", "fp32"), ("onnxruntime", "int8")], min_iter=2, min_seconds=0)
    by = {r["precision"]: r for r in doc["rows"]}
    assert by["fp32"]["status"] == "ok" and by["fp32"]["accuracy"] == 1.0 and doc["reference"] == "onnxruntime"
    assert by["int8"]["status"] == "exported but wrong", by["int8"]
    assert by["int8"]["reason"].startswith("accuracy 1.0000 -> ") and by["int8"]["accuracy"] < 1.0


def test_exported_but_wrong_row_in_markdown():
    doc = {"machine": {"cpu": "x", "usable_cores": 2, "gpus": [], "versions": {}}, "images": 4, "split": "val",
           "model": {"arch": "unet", "encoder": "e"},
           "rows": [Row("onnxruntime", "int8", 1, status="exported but wrong", reason="accuracy 1.0 -> 0.5").__dict__]}
    assert "| onnxruntime | int8 | 1 | exported but wrong: accuracy 1.0 -> 0.5 |" in to_markdown(doc)


def test_bad_requests(tmp_path, capsys):
    m = shared()["model"]
    assert main(["benchmark", "--model", str(m), "--backends", "tflite"]) == 2
    assert "unknown backend 'tflite'; valid: pytorch, onnxruntime, openvino, tensorrt" in capsys.readouterr().err
    assert main(["benchmark", "--model", str(m), "--backends", "onnxruntime:fp16"]) == 2
    assert "runs fp32, int8, not 'fp16'" in capsys.readouterr().err
    assert main(["benchmark", "--model", str(m), "--size", "big"]) == 2
    assert "--size must look like 512x512" in capsys.readouterr().err
    assert main(["benchmark", "--model", str(tmp_path / "nope")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    reason = backend_status()["tensorrt"]
    if reason:
        assert main(["benchmark", "--model", str(m), "--backends", "tensorrt", "--out", str(tmp_path / "x")]) == 2
        assert f"cannot benchmark 'tensorrt' here: {reason}" in capsys.readouterr().err
        assert not list(tmp_path.glob("x*"))
    with pytest.raises(SystemExit):
        main(["benchmark", "--model", str(m), "--batch", "0"])


def test_parse_targets():
    assert parse_targets("ort,onnxruntime:int8,trt,torch") == [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                               ("tensorrt", "fp16"), ("pytorch", "fp32")]
