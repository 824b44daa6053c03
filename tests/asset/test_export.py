"""`asset export`: ONNX parity for a tiny model of each architecture family, INT8, OpenVINO, TensorRT (skipped
without a GPU), the format table, arguments rejected before work, and nothing half-written on failure."""

from __future__ import annotations

import onnx
import pytest

from asset import modeldir
from asset.cli import main
from asset.export import ExportError, export_model, format_status
from tests.asset.backend_helpers import copy_model, make_model_dir, outlier_model, shared

QUIET = {"log": lambda m: None}
# (arch, encoder, channels, fixed size): every architecture family the registry builds on CPU; PSPNet / UPerNet
# need the dynamo exporter at 32x32 (adaptive pooling), PAN a 128x128 canvas.
FAMILIES = [("unetplusplus", "resnet18", 1, None), ("manet", "resnet18", 1, None), ("linknet", "resnet18", 1, None),
            ("fpn", "resnet18", 1, None), ("pspnet", "resnet18", 1, None), ("pan", "resnet18", 1, (128, 128)),
            ("deeplabv3", "resnet18", 1, None), ("deeplabv3plus", "mobilenet_v2", 1, None),
            ("upernet", "resnet18", 1, None), ("segformer", "mit_b0", 3, None)]


def _files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_onnx_export_unet_recorded_and_verified():
    m = shared()["model"]
    card = modeldir.verify(m)  # the exports are covered by the checksums
    e = card["exports"]["onnx"]
    assert e["file"] == "exports/model.onnx" and (m / e["file"]).is_file()
    assert e["dynamic"] == {"batch": True, "height_width": True} and e["opset"] == 17
    v = e["verification"]
    assert v["passed"] and v["split"] == "val" and v["decisions_equal"] == v["images"] > 0
    assert v["reference"] == "PyTorch" and v["inputs"] == f"{v['images']} val images"
    assert v["max_abs_diff"] <= v["tolerance"] and v["mask_agreement"] == 1.0
    model = onnx.load(m / e["file"])
    onnx.checker.check_model(model)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]


@pytest.mark.parametrize("arch,encoder,channels,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_onnx_parity_each_family(tmp_path, arch, encoder, channels, size):
    from tests.asset.helpers import make_dataset

    ds = shared()["dataset"] if channels == 1 else make_dataset(tmp_path / "ds", 8, 4, channels=3)
    m = make_model_dir(tmp_path / arch, ds, arch, encoder, channels, size=size)
    e = export_model(m, "onnx", simplify=False, verify_images=4, **QUIET)
    v = e["verification"]
    assert v["passed"] and v["decisions_equal"] == v["images"] and v["max_abs_diff"] <= v["tolerance"]
    assert modeldir.verify(m)["exports"]["onnx"]["verification"] == v


def test_int8_static_qdq_per_channel():
    m = shared()["model"]
    e = modeldir.verify(m)["exports"]["onnx-int8"]
    q = e["quantisation"]
    assert q["format"] == "QDQ" and q["per_channel"] and q["calibration_split"] == "train"
    # the default scheme targets ONNX Runtime on the CPU (the fastest there); TensorRT's: tests/asset/test_export_gate.py
    assert q["scheme"] == "asymmetric" and (q["activations"], q["weights"], q["biases"]) == ("uint8", "int8", "int32")
    assert q["zero_point"] == "calibrated" and not q["activation_symmetric"] and q["target"] == "onnxruntime-cpu"
    assert q["tensorrt"] == "no"
    speed = e["speed"]
    assert speed["shape"] == [1, 1, 32, 32] and speed["speedup"] == pytest.approx(
        speed["fp32_ms"] / speed["int8_ms"], rel=0.01, abs=0.002)  # what is recorded is what was measured
    v = e["verification"]
    assert v["passed"] and v["accuracy_change"] >= -0.02 and v["pixel_iou_change"] >= -0.02  # the default gate
    graph = onnx.load(m / e["file"]).graph
    produced_by = {out: n for n in graph.node for out in n.output}
    int8_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) > 50
    for conv in convs:  # every convolution reads quantised activations and int8 weights
        x, w = (produced_by.get(name) for name in conv.input[:2])
        assert x is not None and x.op_type == "DequantizeLinear", conv.name
        assert w is not None and w.op_type == "DequantizeLinear" and w.input[0] in int8_weights, conv.name
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    named = {n.input[2] for n in qdq if len(n.input) > 2}
    types = {i.data_type for i in graph.initializer if i.name in named}  # uint8 activations, int8 weights, int32 biases
    assert types == {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.INT32}
    assert (m / e["file"]).stat().st_size < 0.5 * (m / "exports/model.onnx").stat().st_size


def test_openvino_ir_written_and_verified():
    m = shared()["model"]
    e = modeldir.verify(m)["exports"]["openvino"]
    assert e["file"] == "exports/openvino/model.xml" and (m / "exports/openvino/model.bin").is_file()
    assert e["verification"]["passed"] and e["verification"]["decisions_equal"] == e["verification"]["images"]


def test_help_lists_formats_for_this_machine(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    for name in ("onnx", "onnx-int8", "openvino", "tensorrt"):
        assert f"\n  {name} " in out
    assert "onnx-int8  int8" in out
    trt = format_status("tensorrt")
    assert ("no: " + trt if trt else "tensorrt") in out


@pytest.mark.parametrize("args,message", [
    (["--format", "onnx", "--precision", "fp16"], "does not take --precision"),
    (["--format", "onnx", "--calib-images", "8"], "does not take --calib-images"),
    (["--format", "openvino", "--max-batch", "4"], "does not take --max-batch"),
    (["--format", "onnx", "--device", "cuda"], "does not take --device"),
    (["--format", "onnx", "--opset", "7"], "opset 7 is not supported"),
    (["--format", "onnx-int8", "--calib-images", "0"], "must be >= 1"),
])
def test_arguments_a_format_cannot_take_are_rejected_first(tmp_path, capsys, args, message):
    missing = tmp_path / "does-not-exist"  # rejected before the model is even looked at
    assert main(["export", "--model", str(missing), *args]) == 2
    assert message in capsys.readouterr().err
    assert not missing.exists()


def test_format_this_machine_cannot_produce(tmp_path, capsys):
    from asset.export.tensorrt import tensorrt_missing  # tensorrt: its own torch-free checks, in its own order

    why = tensorrt_missing()
    if why is None:
        pytest.skip("this machine can build TensorRT engines")
    m = copy_model(shared()["model"], tmp_path / "m")
    before = _files(m)
    assert main(["export", "--model", str(m), "--format", "tensorrt", "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {why}\n"
    assert _files(m) == before


def test_missing_and_corrupt_model_dirs(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert "no such model directory" in capsys.readouterr().err
    m = copy_model(shared()["model"], tmp_path / "m")
    with open(m / "weights.pt", "ab") as fh:
        fh.write(b"x")
    before = _files(m)
    assert main(["export", "--model", str(m), "--format", "openvino"]) == 2
    assert "checksums do not match" in capsys.readouterr().err
    assert _files(m) == before


def test_failed_verification_writes_nothing(tmp_path):
    m = copy_model(shared()["model"], tmp_path / "m")
    card_before = (m / "model.json").read_text()
    before = _files(m)
    with pytest.raises(ExportError, match=r"failed verification against PyTorch: max \|logit diff\| .* Nothing"):
        export_model(m, "openvino", atol=0.0, **QUIET)  # any difference at all fails
    assert _files(m) == before and (m / "model.json").read_text() == card_before
    modeldir.verify(m)


def test_onnx_int8_accuracy_gate_passes_on_a_fitted_model(tmp_path, capsys):
    """The users' default gate on a model that detects the defects (accuracy 1.0): INT8 keeps its decisions."""
    m = copy_model(shared()["model"], tmp_path / "m")
    assert main(["export", "--model", str(m), "--format", "onnx-int8", "--calib-images", "8"]) == 0
    v = modeldir.verify(m)["exports"]["onnx-int8"]["verification"]
    assert v["accuracy"]["reference"] == 1.0 and v["pixel_iou"]["reference"] > 0.5  # a model where decisions matter
    assert v["passed"] and v["decisions_equal"] == v["images"]
    assert v["accuracy_change"] >= -0.02 and v["pixel_iou_change"] >= -0.02


def test_onnx_int8_accuracy_gate_refuses_an_export_that_changes_decisions(tmp_path, capsys):
    """Same fp32 function with an activation outlier: INT8 changes decisions, the default gate refuses it."""
    m = outlier_model(tmp_path / "m")
    fp32 = modeldir.verify(m)["exports"]["onnx"]["verification"]
    assert fp32["passed"] and fp32["accuracy"]["export"] == 1.0  # the outlier leaves the fp32 model as it was
    before, card_before = _files(m), (m / "model.json").read_text()
    assert main(["export", "--model", str(m), "--format", "onnx-int8", "--calib-images", "8"]) == 2
    err = capsys.readouterr().err
    assert "onnx-int8 failed verification against PyTorch" in err
    assert "accuracy 1.0000 -> " in err and "needs accuracy and pixel IoU to drop by <= 0.02" in err
    assert "Nothing was written" in err
    assert _files(m) == before and (m / "model.json").read_text() == card_before
    modeldir.verify(m)


def test_tensorrt_engine_export():
    why = format_status("tensorrt")
    if why:
        print(f"TensorRT export skipped: {why}")
        pytest.skip(f"TensorRT export: {why}")
    m = shared()["model"]  # pragma: no cover - runs on GPU machines
    for precision in ("fp32", "fp16", "int8"):
        e = export_model(m, "tensorrt", precision=precision, calib_images=8, device="cuda", **QUIET)
        assert e["verification"]["passed"] and e["gpu"]



def _qdq_conv(path, zero_point: int):
    """x -> Q/DQ (uint8, given zero point) -> Conv (int8 per-channel weights, int32 bias behind DequantizeLinear)
    -> Q/DQ: the pattern onnx-int8 writes around every convolution."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sx, sw = np.float32(0.05), rng.uniform(0.01, 0.02, 3).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (sx, "sx"), (np.uint8(zero_point), "zx"), (np.float32(0.1), "sy"), (np.uint8(zero_point), "zy"),
        (rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8), "w"), (sw, "sw"), (np.zeros(3, np.int8), "zw"),
        (rng.integers(-500, 500, 3).astype(np.int32), "b"), (sx * sw, "sb"), (np.zeros(3, np.int32), "zb")]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], inits,
                              value_info=[helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 2, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_signed_for_tensorrt_is_exact(tmp_path):
    """uint8 Q/DQ of zero point 128 -> signed INT8 of zero point 0, int32 biases -> float: what TensorRT takes, and
    the same function (graph optimisations off: ONNX's Q/DQ semantics node by node); an asymmetric model is refused."""
    import numpy as np
    import onnxruntime as ort

    from asset.export.onnx_int8 import signed_for_tensorrt
    from asset.export.tensorrt import check_int8_qdq

    src = _qdq_conv(tmp_path / "u8.onnx", 128)
    signed = tmp_path / "s8.onnx"
    onnx.save(signed_for_tensorrt(src), str(signed))
    assert check_int8_qdq(signed)["int8"] == "signed symmetric (zero point 0)"
    with pytest.raises(ExportError, match="uint8 zero points .*int32 constants dequantised"):
        check_int8_qdq(src)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(1).normal(0, 3, (1, 2, 8, 8)).astype(np.float32)  # saturates some values too
    before, after = (ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                     for p in (src, signed))
    assert np.abs(before).max() > 1 and np.array_equal(before, after)
    again = signed_for_tensorrt(signed)  # already signed: unchanged
    assert again.SerializeToString() == onnx.load(str(signed)).SerializeToString()
    with pytest.raises(ExportError, match="2 uint8 zero points other than 128.*no exact signed equivalent"):
        signed_for_tensorrt(_qdq_conv(tmp_path / "asym.onnx", 120))
