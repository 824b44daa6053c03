"""The export registry: one verification for every format (asset.export.verify), and a format that is one module and
one row (a fake format registered here reaches `asset export`, export_model and the backends' messages)."""

from __future__ import annotations

import numpy as np
import pytest

from asset.export import ExportError
from tests.asset.helpers import make_dataset


# ----------------------------------------------------------------------------- verify.compare
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(algorithm, dataset inputs, random inputs) of a tiny dataset, no torch: compare() needs none."""
    from asset import scoring
    from asset.algorithm import Algorithm, SizePolicy, load_image, load_mask

    ds = make_dataset(tmp_path_factory.mktemp("ds"), n_train=4, n_test=8)
    card = {"dataset": {"path": str(ds)}}
    split, items = scoring.first_split(card)
    algorithm = Algorithm(1, SizePolicy("pad", 32, None), [0.5], [0.25], 0.5, 0.01)
    images = [load_image(i.path) for i in items]
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, size=(32, 32), dtype=np.uint8) for _ in range(4)]
    return algorithm, (split, items, images, [load_mask(i.rle) for i in items]), (None, [], noise, None)


def bright(x: np.ndarray) -> np.ndarray:
    """A stand-in network that finds the fixture's defects: positive logits on its bright squares (value 230, 1.6
    once normalised) only, the noise being 60..120 (-0.12 at most)."""
    return ((x[:, :1] - 0.8) * 4).astype(np.float32)


def _compare(algorithm, inputs, infer, **kw):
    from asset.export.verify import compare

    args = {"exact": True, "atol": 1e-3, "max_drop": 0.02, "what": "fake", "reference_name": "the reference",
            "log": lambda m: None, **kw}
    return compare(infer, bright, algorithm, inputs, **args)


def test_compare_exact_passes_identical_logits_and_records_the_figures(labelled):
    algorithm, data, _ = labelled
    said = []
    f = _compare(algorithm, data, bright, log=said.append)
    n = len(data[2])
    assert f["passed"] and f["max_abs_diff"] == 0 and f["decisions_equal"] == f["images"] == n
    assert f["reference"] == "the reference" and f["split"] == data[0] == "val"
    assert f["inputs"] == f"{n} val images" and f["mask_agreement"] == 1.0
    assert f["accuracy"] == {"reference": 1.0, "export": 1.0} and f["pixel_iou"]["export"] == 1.0
    assert f["accuracy_change"] == f["pixel_iou_change"] == 0
    assert f["tolerance"] == pytest.approx(1e-3 * f["max_abs_logit"]) and f["max_abs_logit"] >= 1
    assert said and said[0].startswith("fake: max |logit diff| 0")


def test_compare_exact_refuses_a_logit_difference_beyond_the_tolerance(labelled):
    algorithm, data, _ = labelled
    shifted = lambda x: bright(x) + 0.01 * np.abs(bright(x)).max()  # noqa: E731 - decisions may well survive
    with pytest.raises(ExportError, match=r"fake failed verification against the reference: max \|logit diff\| "
                                          r".*needs max diff <= 0.001 x max\(1, \|logit\|\).*Nothing was written"):
        _compare(algorithm, data, shifted)
    assert _compare(algorithm, data, shifted, atol=0.02)["passed"]


def test_compare_reduced_precision_gates_accuracy_and_iou(labelled):
    algorithm, data, _ = labelled
    negated = lambda x: -bright(x)  # noqa: E731 - every mask inverted
    off = {"max_ap_drop": None, "max_lost_defects": None}  # the AP and lost-defect rules: tests/asset/test_export_gate.py
    f = _compare(algorithm, data, negated, exact=False, max_drop=1.0, **off)
    assert f["passed"] and f["tolerance"] is None and f["pixel_iou_change"] < -0.9
    with pytest.raises(ExportError, match=r"accuracy .* -> .*pixel IoU .* -> .*needs accuracy and pixel IoU to drop "
                                          r"by <= 0.02"):
        _compare(algorithm, data, negated, exact=False)
    with pytest.raises(ExportError, match="and identical decisions"):
        _compare(algorithm, data, negated, exact=False, max_drop=1.0, same_decisions=True, **off)


def test_compare_without_labels_gates_mask_agreement(labelled):
    algorithm, _, noise = labelled
    f = _compare(algorithm, noise, bright, exact=False)
    assert f["passed"] and f["split"] is None and f["inputs"] == "4 random images (no dataset here)"
    assert "accuracy_change" not in f and "accuracy" not in f
    with pytest.raises(ExportError, match=r"needs >= 98.00% equal mask pixels \(no labelled images here\)"):
        _compare(algorithm, noise, lambda x: -bright(x), exact=False)


def test_compare_an_export_that_fails_to_run(labelled):
    algorithm, data, _ = labelled

    def broken(x):
        raise RuntimeError("bad graph\nwith a long trace")

    with pytest.raises(ExportError, match=r"^fake: the exported model fails to run \(bad graph\); nothing was written$"):
        _compare(algorithm, data, broken)
    with pytest.raises(ExportError, match=r"returns logits of shape \(1, 16, 16\) where the reference returns"):
        _compare(algorithm, data, lambda x: bright(x)[:, :, ::2, ::2])


# ----------------------------------------------------------------------------- the registry
def _model_dir(path):
    """A model directory as far as the export registry and the backends look (no network: the fake needs none)."""
    from asset import modeldir

    path.mkdir()
    (path / "weights.pt").write_bytes(b"weights")
    modeldir.write_card(path, {"arch": "unet", "encoder": "resnet18", "exports": {}})
    return path


@pytest.fixture
def fake_format(monkeypatch):
    """A format registered the way a real one is, and nothing else: its module (built in memory here, as
    asset/export/fake.py would be), its FORMATS row and the EXPORT_KINDS it writes."""
    import sys
    import time
    import types

    from asset import modeldir
    from asset.export import common, formats

    def export(model_dir, *, precision, data, device, log, options):
        started = time.perf_counter()
        staged = common.stage(model_dir, "model.fake")
        staged.write_bytes(f"fake {precision}".encode())
        return common.install_and_record(model_dir, modeldir.export_key("fake", precision), staged,
                                         facts={"device": device, "options": options}, figures={"passed": True},
                                         versions={}, started=started, log=log)

    module = types.ModuleType("asset.export.fake")
    module.export = export
    monkeypatch.setitem(sys.modules, "asset.export.fake", module)
    monkeypatch.setitem(formats.FORMATS, "fake", formats.ExportFormat("fake", "Fake", "asset.export.fake", (), False,
                                                                      frozenset({"atol"})))
    for precision in ("fp16", "int8"):  # run by ONNX Runtime, at a precision no other export gives it
        monkeypatch.setitem(modeldir.EXPORT_KINDS, f"fake-{precision}", modeldir.ExportKind(
            f"fake-{precision}", "fake", "onnxruntime", precision, f"exports/model-{precision}.fake"))
    return module


def test_a_new_format_is_one_module_and_one_row(fake_format, tmp_path, capsys):
    from asset import modeldir
    from asset.backends.base import BackendError, export_for
    from asset.cli import main
    from asset.export import export_model

    m = _model_dir(tmp_path / "m")
    with pytest.raises(BackendError, match=rf"needs the 'fake-fp16' export.*`asset export --model {m} --format fake "
                                           r"--precision fp16`"):
        export_for(modeldir.verify(m), m, "onnxruntime", "fp16")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "\n  fake       fp16,int8" in capsys.readouterr().out

    assert main(["export", "--model", str(m), "--format", "fake", "--atol", "0.5"]) == 0
    entry = modeldir.verify(m)["exports"]["fake-fp16"]  # the default precision: the format's first kind
    assert (entry["file"], entry["format"], entry["precision"], entry["backend"]) == (
        "exports/model-fp16.fake", "fake", "fp16", "onnxruntime")
    assert entry["device"] == "cpu" and entry["options"] == {"atol": 0.5}
    assert (m / entry["file"]).read_bytes() == b"fake fp16"
    assert export_for(modeldir.verify(m), m, "onnxruntime", "fp16")[2] == m / "exports/model-fp16.fake"

    entry = export_model(m, "fake", precision="int8", log=lambda msg: None)
    assert entry["file"] == "exports/model-int8.fake" and modeldir.export_key_for("onnxruntime", "int8") == "onnx-int8"
    assert sorted(modeldir.verify(m)["exports"]) == ["fake-fp16", "fake-int8"]
    assert not list((m / "exports").glob(".tmp-*"))

    assert main(["export", "--model", str(m), "--format", "fake", "--calib-images", "4"]) == 2
    assert "format 'fake' does not take --calib-images (it takes --atol, --precision)" in capsys.readouterr().err
    with pytest.raises(ExportError, match="format 'fake' builds fp16, int8, not fp32"):
        export_model(m, "fake", precision="fp32")


def test_unknown_format_lists_the_registry():
    from asset.export import export_model

    with pytest.raises(ExportError, match="unknown export format 'tflite'; valid: onnx, onnx-int8, openvino, tensorrt"):
        export_model("nowhere", "tflite")


def test_every_row_names_an_exporter_with_the_contract_and_the_kinds_it_writes():
    import importlib
    import inspect

    from asset import modeldir
    from asset.export.formats import FORMATS

    assert {k.format for k in modeldir.EXPORT_KINDS.values()} == set(FORMATS)
    expected = ["model_dir", "precision", "data", "device", "log", "options"]
    for name, row in FORMATS.items():
        assert row.module == f"asset.export.{name.replace('-', '_')}" and row.keys and row.precisions
        assert {modeldir.EXPORT_KINDS[k].backend for k in row.keys} == {row.backend}
        params = inspect.signature(importlib.import_module(row.module).export).parameters
        assert list(params)[:6] == expected, name
        assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in expected[1:]), name
    assert FORMATS["tensorrt"].precisions == ("fp16", "fp32", "int8") and FORMATS["tensorrt"].device == "cuda"
    assert FORMATS["openvino"].keys == ("openvino",) and FORMATS["onnx-int8"].backend == "onnxruntime"


def test_the_registry_imports_no_torch_and_no_engine():
    import subprocess
    import sys

    code = ("import sys, asset.export, asset.export.formats as f; f.status_table(); "
            "[r.kinds for r in f.FORMATS.values()]; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
