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
from tests.asset.backend_helpers import make_model_dir, shared

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


def test_float_scales_resize_stays_fp32_and_pan_converts(tmp_path):
    """PAN (global pooling, attention, bilinear upsampling by scale) converts and stays close to fp32."""
    import onnx

    from asset.export import export_model

    m = make_model_dir(tmp_path / "pan", shared()["dataset"], arch="pan")
    export_model(m, "onnx", log=lambda s: None, verify_images=4)
    src = m / "exports" / "model.onnx"
    mixed = MP.convert(src)
    out = MP.write(src, tmp_path / "pan-fp16.onnx")
    assert out["converter"].startswith("onnxconverter-common ") and out["casts"] >= 2
    resize_with_scales = [n.name for n in onnx.load(str(src)).graph.node
                          if n.op_type in MP.RESIZE_OPS and any(n.input[1:3])]
    assert MP.fp32_nodes(mixed) == resize_with_scales
    x = np.random.default_rng(0).normal(size=(2, 1, 64, 64)).astype(np.float32)
    a, b = _session(mixed)(x), _session(onnx.load(str(src)))(x)
    assert np.max(np.abs(a - b)) <= 0.02 * max(1.0, float(np.max(np.abs(b))))
    with pytest.raises(ExportError, match="already holds float16 weights"):
        MP.convert(tmp_path / "pan-fp16.onnx")
