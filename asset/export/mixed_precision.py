"""FP16 for strongly typed TensorRT: the fp32 ONNX export converted to mixed precision before the engine is built.

TensorRT 10's strongly typed networks and TensorRT 11 (always strongly typed; BuilderFlag.FP16 is gone) take each
tensor's precision from the ONNX model, so an FP16 engine is built from an FP16 ONNX model. The conversion is
onnxconverter-common's float16 converter (maintained with ONNX Runtime; pure Python, so it runs on the device that
builds the engine, Jetson included):
- inputs and outputs stay float32 (keep_io_types): every backend feeds and reads the same tensors;
- ops whose FP16 range or accuracy is not enough stay float32 (FP32_OPS: exponentials, powers, reductions,
  normalisations, plus the converter's own list of non-float ML ops). Resize stays FP16 unless it takes float
  scales / roi (they must stay float32 by the ONNX spec, which the converter does not handle): the U-Net decoders
  exported here resize to int64 `sizes`, so their upsampling runs in FP16 without casts around it.

The gate, the same for TensorRT FP16 engines and for this conversion checked under ONNX Runtime (test_trt_fp16.py):
identical image decisions and a pixel-IoU change of at most FP16_MAX_IOU_CHANGE against the fp32 ONNX model (on
labelled images; on random images at least 1 - FP16_MAX_IOU_CHANGE of the mask pixels equal).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from asset.export.formats import ExportError

CONVERTER = "onnxconverter-common"  # PyPI name; module onnxconverter_common
FP16_MAX_IOU_CHANGE = 0.01
# Kept in float32, besides onnxconverter-common's DEFAULT_OP_BLOCK_LIST (ML ops without float16 kernels).
FP32_OPS = ("Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Softmax", "LogSoftmax", "Erf", "ReduceMean", "ReduceSum",
            "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd", "GlobalAveragePool", "InstanceNormalization",
            "LayerNormalization", "GroupNormalization", "RandomNormalLike", "RandomUniformLike")
RESIZE_OPS = ("Resize", "Upsample")  # FP16 unless they take float scales / roi (see the module docstring)


def converter_missing() -> str | None:
    """Why FP16 ONNX models cannot be made here (None: they can). Imports nothing heavy."""
    from asset.backends import installed

    missing = [p for p, m in (("onnx", "onnx"), (CONVERTER, "onnxconverter_common")) if not installed(m)]
    if missing:
        return (f"{' and '.join(missing)} not installed: FP16 engines are built from the ONNX export converted to "
                "mixed precision (pip install -r platforms/x86-cuda/requirements-gpu.txt on x86, "
                "platforms/jetson/requirements-jetson.txt on a Jetson)")
    return None


def fp32_nodes(model) -> list[str]:
    """Resize / Upsample nodes that take float scales or roi: they stay float32."""
    return [n.name for n in model.graph.node if n.op_type in RESIZE_OPS and any(n.input[1:3])]


def convert(src: str | Path):
    """The fp32 ONNX model at `src` as a mixed-precision onnx.ModelProto (float32 I/O), checked by onnx.checker."""
    why = converter_missing()
    if why:
        raise ExportError(why)
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        raise ExportError(f"{src} already holds float16 weights: convert the fp32 ONNX export (exports/model.onnx)")
    block = [op for op in float16.DEFAULT_OP_BLOCK_LIST if op not in RESIZE_OPS] + list(FP32_OPS)
    try:
        with warnings.catch_warnings():  # "truncated to 1e-07": tiny weights flushed to FP16's range, expected
            warnings.simplefilter("ignore")
            mixed = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                                     node_block_list=fp32_nodes(model))
        # The converter leaves float32 value_info on tensors it re-typed (ONNX Runtime then refuses the model):
        # drop it all and let shape inference write it again from the nodes.
        del mixed.graph.value_info[:]
        mixed = onnx.shape_inference.infer_shapes(mixed)
        onnx.checker.check_model(mixed)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter's and checker's own error types
        raise ExportError(f"converting {src} to mixed precision failed ({type(exc).__name__}: {exc})") from None
    return mixed


def write(src: str | Path, dst: str | Path) -> dict:
    """Convert `src` and save it to `dst`. Returns the facts recorded with the engine (tool, what stayed FP32)."""
    from importlib import metadata

    import onnx

    mixed = convert(src)
    onnx.save(mixed, str(dst))
    fp32 = sorted({n.op_type for n in mixed.graph.node if n.op_type in FP32_OPS} | set(fp32_nodes(mixed)))
    casts = sum(n.op_type == "Cast" for n in mixed.graph.node)
    return {"converter": f"{CONVERTER} {metadata.version(CONVERTER)} float16 (keep_io_types)",
            "fp32_kept": fp32, "casts": casts}
