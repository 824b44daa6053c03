"""FP16 engines are built from the fp32 ONNX export converted to mixed precision (asset/export/mixed_precision.py).
The conversion runs on the CPU: here the converted model of the fitted test detector runs under ONNX Runtime and must
pass the gate the TensorRT FP16 verification applies (identical decisions, pixel-IoU change within
FP16_MAX_IOU_CHANGE against the fp32 ONNX model). ONNX Runtime's CPU provider computes most FP16 ops in float32
(it inserts casts), so this checks the conversion - FP16 weights, float32 I/O, the graph's types - and TensorRT's
FP16 arithmetic is checked by the same gate on the GPU (scripts/gpu-check.sh)."""

from __future__ import annotations

import numpy as np
import pytest

from asset import modeldir
from asset.algorithm import Algorithm
from asset.backends import load_backend
from asset.export import ExportError
from asset.export import mixed_precision as MP
from asset.export import tensorrt as T
from asset.export.verify import compare
from tests.asset.backend_helpers import shared

pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is not installed (asset/requirements.txt)")


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_mixed_precision_model_passes_the_fp16_gate(tmp_path):
    import onnx

    m = shared()["model"]
    card = modeldir.verify(m)
    mixed = MP.convert(m / "exports" / "model.onnx")
    types = {onnx.TensorProto.DataType.Name(t.data_type) for t in mixed.graph.initializer}
    assert "FLOAT16" in types
    io = [onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in (*mixed.graph.input,
                                                                                 *mixed.graph.output)]
    assert io == ["FLOAT", "FLOAT"]
    assert not MP.fp32_nodes(mixed)  # this U-Net resizes to int64 sizes: its upsampling stays FP16
    fp16 = _session(mixed)
    with load_backend("onnxruntime", m, card=card, threads=1) as ref:
        inputs = T.verification_inputs(card, None, 16, log=lambda s: None)
        x = Algorithm.from_card(card).preprocess([inputs[2][0]])[0]
        a, b = fp16(x), ref.infer(x)
        assert a.dtype == np.float32 and a.shape == b.shape
        assert 0 < np.max(np.abs(a - b)) <= 0.01 * max(1.0, float(np.max(np.abs(b))))  # FP16 rounding, no more
        gate = {"exact": False, "atol": 1e-3, "max_drop": MP.FP16_MAX_IOU_CHANGE, "same_decisions": True,
                "what": "fp16 onnx", "reference_name": T.REFERENCE, "log": lambda s: None}  # TensorRT fp16's gate
        figures = compare(fp16, ref.infer, Algorithm.from_card(card), inputs, **gate)
        with pytest.raises(ExportError, match="and identical decisions"):  # and it can fail
            compare(lambda x: fp16(x) + 50.0, ref.infer, Algorithm.from_card(card), inputs, **gate)
    assert figures["passed"] and figures["decisions_equal"] == figures["images"]
    assert abs(figures["pixel_iou_change"]) <= MP.FP16_MAX_IOU_CHANGE


def test_resize_with_float_scales_stays_fp32(tmp_path):
    """A Resize by float scales (PAN's, FPN's bilinear upsampling) keeps them float32, as ONNX requires: the node
    stays FP32 between casts; the rest converts and stays close to fp32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(1, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["images", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Resize", ["b", "", "scales"], ["c"], mode="linear", name="up"),
             helper.make_node("Conv", ["c", "w2"], ["logits"], pads=[1, 1, 1, 1], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 1, "h", "w"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(src))
    mixed = MP.convert(src)
    assert MP.fp32_nodes(mixed) == ["up"]
    types = {t.name: t.data_type for t in mixed.graph.initializer}
    assert types["scales"] == TensorProto.FLOAT and types["w1"] == types["w2"] == TensorProto.FLOAT16
    out = MP.write(src, tmp_path / "m16.onnx")
    assert out["converter"].startswith("onnxconverter-common ") and out["fp32_kept"] == ["up"] and out["casts"] >= 4
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    a, b = _session(mixed)(x), _session(onnx.load(str(src)))(x)
    assert a.shape == b.shape == (2, 1, 16, 16) and a.dtype == np.float32
    assert np.max(np.abs(a - b)) <= 0.01 * max(1.0, float(np.max(np.abs(b))))
    with pytest.raises(ExportError, match="already holds float16 weights"):
        MP.convert(tmp_path / "m16.onnx")
