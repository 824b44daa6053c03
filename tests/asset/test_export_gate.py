"""The gate of reduced-precision exports (asset/export/verify.py): judged on a check set with enough defective images,
by AP of the image score and by the defects the reference finds, not only accuracy; refuses an export that loses a
found defect or more than 0.01 AP by default (--max-ap-drop, --max-lost-defects), and writes nothing then."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asset import modeldir
from asset.cli import main
from asset.export import ExportError
from tests.asset.backend_helpers import copy_model, outlier_model, shared
from tests.asset.helpers import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A dataset whose val split alone holds fewer than 20 defective images (val + train: 30)."""
    return make_dataset(tmp_path_factory.mktemp("gate"), n_train=60, n_test=4)


def _algorithm():
    from asset.algorithm import Algorithm, SizePolicy

    return Algorithm(1, SizePolicy("pad", 32, None), [0.5], [0.25], 0.5, 0.01)


def bright(x: np.ndarray) -> np.ndarray:
    """A stand-in network that finds the dataset's defects: positive logits on its bright squares only."""
    return ((x[:, :1] - 0.8) * 4).astype(np.float32)


def _compare(inputs, infer, check=None, **kw):
    from asset.export.verify import compare

    args = {"exact": False, "atol": 1e-3, "max_drop": 1.0, "what": "onnx-int8", "reference_name": "PyTorch",
            "log": lambda m: None, "check": check, **kw}
    return compare(infer, bright, _algorithm(), inputs, **args)


def _losing(inputs, k: int):
    """`bright`, except on the k-th image of `inputs`, where it finds nothing (an export that loses that defect)."""
    target = _algorithm().preprocess([inputs[2][k]])[0][0]

    def infer(x):
        out = bright(x)
        for i in range(len(x)):
            if x[i].shape == target.shape and np.array_equal(x[i], target):
                out[i] = -10.0
        return out

    return infer


def test_check_set_adds_train_images_until_enough_defects(data):
    from asset.export.verify import MIN_CHECK_DEFECTS, check_set

    card = {"dataset": {"path": str(data)}}
    said = []
    (split, items, images, masks), check = check_set(card, None, 128, log=said.append)
    assert split == "val+train" and check["splits"] == ["val", "train"]
    assert check["defective_images"] == sum(i.defective for i in items) == 30 and check["warning"] is None
    assert check["images"] == len(items) == len(images) == len(masks) == 60 and not said
    assert check["min_defective"] == MIN_CHECK_DEFECTS == 20
    assert not any(i.id.startswith("test/") for i in items)  # test stays held out
    # a smaller budget keeps the defective images first, with room for OK ones (AP needs both)
    (_, items, _, _), check = check_set(card, None, 30)
    assert check["defective_images"] == 20 and check["ok_images"] == 10 and len(items) == 30
    # val alone is enough when it holds the defects asked for
    (split, items, _, _), check = check_set(card, None, 128, min_defective=5)
    assert split == "val" and check["splits"] == ["val"] and all(i.defective for i in items[:check["defective_images"]])


def test_check_set_warns_when_the_dataset_has_too_few_defects(tmp_path):
    from asset.export.verify import check_set

    card = {"dataset": {"path": str(make_dataset(tmp_path, n_train=12, n_test=2))}}
    said = []
    _, check = check_set(card, None, 128, log=said.append)
    assert check["defective_images"] == 6 and check["splits"] == ["val", "train"]
    assert "checked on 6 defective images" in check["warning"] and "20 wanted" in check["warning"]
    assert said == [f"warning: {check['warning']}"]


def test_an_export_that_keeps_every_decision_passes_and_records_ap_and_defects(data):
    from asset.export.verify import check_set

    inputs, check = check_set({"dataset": {"path": str(data)}}, None, 128)
    f = _compare(inputs, bright, check)
    assert f["passed"] and f["check_set"] == check and f["ap"] == {"reference": 1.0, "export": 1.0}
    assert f["ap_change"] == 0 and f["gate"] == {"max_accuracy_drop": 1.0, "max_ap_drop": 0.01, "max_lost_defects": 0}
    d = f["defects"]
    assert d["defective_images"] == d["found_by_reference"] == d["found_by_export"] == 30 and d["lost"] == []


def test_an_export_that_loses_one_found_defect_is_refused(data):
    """One defective image of 60 missed: accuracy drops by 1/60 < 0.02, so only the new rules catch it."""
    from asset.export.verify import check_set

    inputs, check = check_set({"dataset": {"path": str(data)}}, None, 128)
    k = next(i for i, it in enumerate(inputs[1]) if it.defective)
    lost_id = inputs[1][k].id
    with pytest.raises(ExportError) as err:
        _compare(inputs, _losing(inputs, k), check, max_drop=0.02)
    msg = str(err.value)
    assert msg.startswith("onnx-int8 failed verification against PyTorch (")
    assert "it misses 1 defective image(s) that PyTorch finds" in msg and f"(lost: {lost_id})" in msg
    assert "defects found 30 -> 29 of 30" in msg and "at most 0 lost defect(s) (--max-lost-defects)" in msg
    assert "Nothing was written" in msg
    # the AP rule alone refuses it too: the lost image now ranks below every OK one
    with pytest.raises(ExportError, match=r"AP dropped by 0\.0\d+ > 0\.01"):
        _compare(inputs, _losing(inputs, k), check, max_lost_defects=None)
    # both rules loosened: it passes, and the figures still say what it lost
    f = _compare(inputs, _losing(inputs, k), check, max_ap_drop=0.05, max_lost_defects=1)
    assert f["passed"] and f["defects"]["lost"] == [lost_id] and f["ap_change"] < -0.01


def test_the_gate_goes_through_the_algorithm_decision_rule(data):
    """The gate reads Prediction.score / .defective from Algorithm.postprocess; a network output with a second
    channel (a decision head's image logit) is compared whole (both channels), whatever rule the card names."""
    import inspect

    from asset.algorithm import Algorithm
    from asset.export.verify import check_set

    if "decision" not in inspect.signature(Algorithm).parameters:
        pytest.skip("this Algorithm has no decision rules (decision heads not merged)")
    inputs, check = check_set({"dataset": {"path": str(data)}}, None, 64)
    alg = _algorithm().with_decision("head")

    def two(x, image_logit):
        seg = bright(x)
        return np.concatenate([seg, np.broadcast_to(image_logit(seg), seg.shape)], axis=1).astype(np.float32)

    ref = lambda x: two(x, lambda s: s.max(axis=(1, 2, 3), keepdims=True))  # noqa: E731
    flat = lambda x: two(x, lambda s: np.full((len(s), 1, 1, 1), -5.0, np.float32))  # noqa: E731 - head says OK
    from asset.export.verify import compare

    args = {"exact": False, "atol": 1e-3, "max_drop": 1.0, "what": "onnx-int8", "reference_name": "PyTorch",
            "log": lambda m: None}
    assert compare(ref, ref, alg, inputs, **args)["passed"]
    with pytest.raises(ExportError, match="misses 30 defective image"):  # same masks, the head's decisions lost
        compare(flat, ref, alg, inputs, **args)


def _files(m):
    return sorted(p.relative_to(m).as_posix() for p in m.rglob("*") if p.is_file())


def test_asset_export_int8_records_the_check_set(tmp_path, capsys):
    m = copy_model(shared()["model"], tmp_path / "m")
    assert main(["export", "--model", str(m), "--format", "onnx-int8", "--calib-images", "8"]) == 0
    v = modeldir.verify(m)["exports"]["onnx-int8"]["verification"]
    assert v["passed"] and v["check_set"]["splits"] == ["val", "train"] and v["split"] == "val+train"
    assert v["check_set"]["defective_images"] == v["defects"]["defective_images"] > 0
    assert v["defects"]["lost"] == [] and v["ap_change"] is not None and v["ap_change"] >= -0.01
    assert v["gate"] == {"max_accuracy_drop": 0.02, "max_ap_drop": 0.01, "max_lost_defects": 0}
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["verification"]["check_set"] == v["check_set"]


def test_asset_export_refuses_an_int8_model_that_loses_defects_and_writes_nothing(tmp_path, capsys):
    m = outlier_model(tmp_path / "m")
    before, card_before = _files(m), (m / "model.json").read_text()
    assert main(["export", "--model", str(m), "--format", "onnx-int8", "--calib-images", "8",
                 "--max-accuracy-drop", "1"]) == 2
    err = capsys.readouterr().err
    assert "onnx-int8 failed verification against PyTorch (" in err and "Nothing was written" in err
    assert "defective image(s) that PyTorch finds" in err or "AP dropped by" in err
    assert _files(m) == before and (m / "model.json").read_text() == card_before
    # the keys that loosen the gate let it through, and the card records what it lost
    assert main(["export", "--model", str(m), "--format", "onnx-int8", "--calib-images", "8", "--max-accuracy-drop",
                 "1", "--max-ap-drop", "1", "--max-lost-defects", "1000"]) == 0
    v = modeldir.verify(m)["exports"]["onnx-int8"]["verification"]
    assert v["gate"] == {"max_accuracy_drop": 1.0, "max_ap_drop": 1.0, "max_lost_defects": 1000}
    assert v["defects"]["lost"] or v["ap_change"] < -0.01


def test_gate_options_are_checked(tmp_path, capsys):
    m = shared()["model"]
    assert main(["export", "--model", str(m), "--format", "onnx-int8", "--max-lost-defects", "-1"]) == 2
    assert "--max-lost-defects must be >= 0" in capsys.readouterr().err
    assert main(["export", "--model", str(m), "--format", "onnx", "--max-ap-drop", "0.05"]) == 2
    assert "format 'onnx' does not take --max-ap-drop" in capsys.readouterr().err


# ----------------------------------------------------------------------------- per-target INT8 schemes
def _two_channel_graph(path):
    """features -> Conv (segmentation logits) and -> GlobalAveragePool -> Flatten -> Gemm -> Reshape -> Expand (an
    image logit broadcast), concatenated as a 2-channel output: a decision head's shape of network."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(4, 1)).astype(np.float32), "g"),
             numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["images", "w0"], ["f"], name="features", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["f"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["seg"], name="seg_head"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["fl"], name="flatten"),
             helper.make_node("Gemm", ["fl", "g"], ["il"], name="image_logit"),
             helper.make_node("Reshape", ["il", "shape"], ["il4"], name="reshape"),
             helper.make_node("Shape", ["seg"], ["s"], name="shape_of_seg"),
             helper.make_node("Expand", ["il4", "s"], ["broad"], name="broadcast"),
             helper.make_node("Concat", ["seg", "broad"], ["logits"], name="concat", axis=1)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                           [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def test_fp32_tail_keeps_a_second_output_channel_out_of_int8(tmp_path):
    from asset.export.onnx_int8 import fp32_tail

    tail = fp32_tail(_two_channel_graph(tmp_path / "two.onnx"))
    assert set(tail) == {"concat", "broadcast", "reshape", "image_logit", "flatten", "pool", "shape_of_seg"}
    assert "seg_head" not in tail and "features" not in tail  # convolutions stay quantised


def test_the_scheme_is_chosen_per_target_and_recorded(tmp_path):
    """asymmetric (ONNX Runtime CPU, the default; this Unet has no ConvTranspose to keep FP32), symmetric-uint8
    (TensorRT): exactly convertible to TensorRT's signed form; the card says which."""
    import onnx

    from asset.export import export_model
    from asset.export.onnx_int8 import signed_for_tensorrt

    m = copy_model(shared()["model"], tmp_path / "m")
    q = modeldir.verify(m)["exports"]["onnx-int8"]["quantisation"]
    assert (q["scheme"], q["target"], q["tensorrt"]) == ("asymmetric", "onnxruntime-cpu", "no")
    assert q["fp32_nodes"] == []  # a plain segmentation head: its output is made by a convolution
    with pytest.raises(ExportError, match="--scheme symmetric-uint8"):
        signed_for_tensorrt(m / "exports" / "model-int8.onnx")
    e = export_model(m, "onnx-int8", scheme="symmetric-uint8", calib_images=8, log=lambda s: None)
    q = e["quantisation"]
    assert (q["scheme"], q["target"], q["tensorrt"], q["zero_point"]) == ("symmetric-uint8", "tensorrt",
                                                                          "after signed_for_tensorrt", 128)
    assert q["fp32_op_types"] == [] and e["verification"]["passed"]
    signed = signed_for_tensorrt(m / "exports" / "model-int8.onnx")
    assert not any(t.data_type == onnx.TensorProto.UINT8 for t in signed.graph.initializer)
