"""`asset report`'s parts without a sweep: Pareto front, recommendation and Spearman against hand computations;
reading benchmark JSONs (both schemas, batch choice, failed rows, conflicts, device names); option errors."""

from __future__ import annotations

import json

import pytest

from asset.cli import main
from asset.report.analysis import Point, average_ranks, pareto_front, recommend, spearman, summary
from asset.report.collect import Collected, Model, ReportError, add_benchmark, device_label, read_benchmarks
from asset.report.render import build, model_name, resolve_device

A, B, C = Point("A", 10, 0.90), Point("B", 20, 0.95, 0.5), Point("C", 15, 0.85)
D, E, F = Point("D", 20, 0.95, 0.6), Point("E", 40, 0.94), Point("F", 50, 0.99)
POINTS = [A, B, C, D, E, F]


def test_pareto_front_by_hand():
    # C (15 ms, 85%) is beaten by A (10 ms, 90%); E (40 ms, 94%) by B and D (20 ms, 95%);
    # B and D are equal on both axes: neither beats the other, both stay.
    assert [p.name for p in pareto_front(POINTS)] == ["A", "B", "D", "F"]
    assert pareto_front([]) == []
    assert pareto_front([C]) == [C]


def test_recommendation_by_hand():
    r = recommend(POINTS, 20)  # within 20 ms: A, B, C, D; B and D tie on accuracy, D has the higher IoU
    assert r["best"] == D and r["runner_up"] == B and r["better_over_budget"] == F and r["fastest"] is None
    r = recommend(POINTS, 12)  # only A
    assert r["best"] == A and r["runner_up"] is None and r["better_over_budget"] == F
    r = recommend(POINTS, 60)  # everything fits: F, nothing better over budget
    assert r["best"] == F and r["runner_up"] == D and r["better_over_budget"] is None
    r = recommend(POINTS, 5)
    assert r["best"] is None and r["fastest"] == A


def test_spearman_by_hand():
    # no ties: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks x = 1, 2.5, 2.5, 4; Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    assert average_ranks([3, 1, 3]) == [2.5, 1.0, 2.5]


def test_summary_median_and_mean():
    assert summary([0.9, None, 0.5, 0.7, 0.8]) == {"n": 4, "median": pytest.approx(0.75), "mean": pytest.approx(0.725)}
    assert summary([None]) == {"n": 0, "median": None, "mean": None}


def test_model_names_as_in_the_paper():
    assert model_name(Model("d", "unet", "mobilenet_v2")) == "MobileNetV2-Unet"
    assert model_name(Model("d", "unetplusplus", "efficientnet-b4")) == "EfficientNet-B4-UnetPlusPlus"
    assert model_name(Model("d", "deeplabv3", "resnet34")) == "ResNet34-DeepLabV3"
    assert model_name(Model("d", "pan", "inceptionv4")) == "InceptionV4-PAN"


def _collected() -> Collected:
    c = Collected()
    for arch, acc in (("unet", 0.9), ("linknet", 0.8)):
        for ds in ("dagm", "ksdd"):
            m = Model(ds, arch, "mobilenet_v2", 0.85, 0.5, acc, 0.4)
            c.models[m.key] = m
    return c


def _bench(arch: str, rows: list[dict], dataset: str | None = "dagm") -> dict:
    """An `asset benchmark` (asset-benchmark/1) document, by hand."""
    return {"schema": "asset-benchmark/1", "machine": {"cpu": "Intel Xeon 8480", "usable_cores": 22, "gpus": []},
            "model": {"arch": arch, "encoder": "mobilenet_v2", "dataset": {"name": dataset, "version": "v1"}},
            "rows": rows}


def _row(backend, batch, ms, status="ok", precision="fp32", reason=""):
    return {"backend": backend, "precision": precision, "batch": batch, "status": status, "reason": reason,
            "p50_ms": ms}


def test_full_benchmark_json_batch_one_and_failed_rows():
    c = _collected()
    add_benchmark(c, _bench("unet", [_row("onnxruntime", 1, 12.5), _row("onnxruntime", 4, 9.0),
                                     _row("onnxruntime", 1, None, "failed", "int8", "not exported: asset export"),
                                     _row("openvino", 1, 11.0, "exported but wrong", reason="differs")]), "u.json")
    assert c.columns == ["Intel Xeon 8480 (22 cores):onnxruntime", "Intel Xeon 8480 (22 cores):onnxruntime-int8",
                         "Intel Xeon 8480 (22 cores):openvino"]
    key = ("dagm", "unet", "mobilenet_v2")
    assert c.cells[(key, c.columns[0])].ms == 12.5  # batch 1, not 4
    assert c.cells[(key, c.columns[1])].ms is None and "not exported" in c.cells[(key, c.columns[1])].reason
    assert c.cells[(key, c.columns[2])].ms is None and "exported but wrong" in c.cells[(key, c.columns[2])].reason
    assert not any(k[0][0] == "ksdd" for k in c.cells)  # the file names its dataset: dagm only
    assert c.left_out == []


def test_speed_json_applies_to_every_dataset_and_conflicts_are_left_out(tmp_path):
    c = _collected()
    speed = {"schema": "asset-benchmark-speed/1", "device": {"description": "Raspberry Pi 4 Model B"},
             "model": {"arch": "linknet", "encoder": "mobilenet_v2"},
             "rows": [{"backend": "onnxruntime", "precision": "fp32", "batch": 1, "status": "ok", "ms": 80.0}]}
    (tmp_path / "a.json").write_text(json.dumps(speed))
    (tmp_path / "same.json").write_text(json.dumps(speed))  # the same figure twice: no conflict
    speed["rows"][0]["ms"] = 95.0
    (tmp_path / "other.json").write_text(json.dumps(speed))
    read_benchmarks(c, [f"rpi4={tmp_path / 'a.json'}", f"rpi4={tmp_path / 'same.json'}"])
    assert c.columns == ["rpi4:onnxruntime"] and c.left_out == []
    assert {k[0][0] for k in c.cells} == {"dagm", "ksdd"}
    read_benchmarks(c, [f"rpi4={tmp_path / 'other.json'}", str(tmp_path / "missing.json")])
    cell = c.cells[(("dagm", "linknet", "mobilenet_v2"), "rpi4:onnxruntime")]
    assert cell.ms is None and "80.0 ms" in cell.reason and "95.0 ms" in cell.reason
    assert sum("conflicting figures" in x for x in c.left_out) == 2  # one per dataset
    assert any("missing.json: cannot be read" in x for x in c.left_out)
    assert device_label(speed) == "Raspberry Pi 4 Model B"


def test_device_option_resolution():
    c = _collected()
    add_benchmark(c, _bench("unet", [_row("onnxruntime", 1, 5.0), _row("openvino", 1, 4.0)]), "x.json", label="xeon")
    add_benchmark(c, _bench("unet", [_row("pytorch", 1, 2.0)]), "y.json", label="a100")
    assert resolve_device(c, "a100") == "a100:pytorch"
    assert resolve_device(c, "xeon:openvino") == "xeon:openvino"
    with pytest.raises(ReportError, match="several backends"):
        resolve_device(c, "xeon")
    with pytest.raises(ReportError, match="not among the devices"):
        resolve_device(c, "rpi4")
    with pytest.raises(ReportError, match="go together"):
        build(c, budget_ms=10)
    _, data = build(c, budget_ms=4.5, device="xeon:openvino", reference="a100")
    rec = data["datasets"]["dagm"]["recommendation"]
    assert rec["best"] == "MobileNetV2-Unet" and rec["runner_up"] is None
    assert data["reference"] == "a100:pytorch"
    # ksdd has no figures: its tables show '-' with the reason
    ks = data["datasets"]["ksdd"]
    assert ks["top_speed"]["rows"] == [] and ks["top_accuracy"]["rows"][0][6] == "- [1]"
    assert ks["footnotes"] == [f"no benchmark of this model on {col}"
                               for col in ("xeon:onnxruntime", "xeon:openvino", "a100:pytorch")]
    assert ks["top_accuracy"]["rows"][1][6:] == ["- [1]", "- [2]", "- [3]"]


def test_report_cli_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no such sweep directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--budget-ms", "-3", "--device", "x"]) == 2
    assert "--budget-ms" in capsys.readouterr().err
    # an empty directory still gives a report that says what is missing
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    assert "sweep.yaml missing" in (tmp_path / "r" / "report.md").read_text()


def test_pareto_plot_is_a_png_of_the_asked_size_with_the_front_in_red():
    import io

    import numpy as np
    from PIL import Image

    from asset.report.render import plot_png

    points = [Point("U-Net", 40.0, 0.97), Point("FPN", 25.0, 0.95), Point("PSPNet", 30.0, 0.90), Point("Linknet", 10.0, 0.91)]
    front = pareto_front(points)
    assert [p.name for p in front] == ["Linknet", "FPN", "U-Net"]
    img = np.asarray(Image.open(io.BytesIO(plot_png(points, front, "synthetic: test accuracy vs ms per image on x",
                                                     size=(640, 400)))).convert("RGB")).astype(int)
    assert img.shape == (400, 640, 3)
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.sum() > 200  # the staircase and its three markers
    grey = (abs(img[..., 0] - 211) < 8) & (abs(img[..., 1] - 211) < 8) & (abs(img[..., 2] - 211) < 8)
    assert grey.sum() > 20  # PSPNet, off the front
