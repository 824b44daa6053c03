"""`asset export --format onnx-int8`: static INT8 quantisation of the fp32 ONNX model (QDQ), calibrated on training
images, verified against PyTorch with the accuracy gate (asset/export/verify.py), timed against the fp32 model.

Schemes, one per target (SCHEMES; --scheme; recorded in model.json exports["onnx-int8"].quantisation with its
target, what stayed FP32 and whether TensorRT can build from it):
- "asymmetric" (the default; target ONNX Runtime on the CPU): uint8 activations with calibrated zero points, signed
  per-channel weights, int32 biases. Its zero points let ONNX Runtime fold every ReLU / ReLU6 (Clip) into the
  quantisation of the convolution before it. ConvTranspose stays FP32 (ORT_FP32_OPS): ONNX Runtime's CPU provider
  has no INT8 kernel for it, so quantising it only adds a per-run dequantisation of its weights.
- "symmetric-uint8" (target TensorRT; ONNX Runtime runs it too): zero point 128, exactly TensorRT's signed form after
  `signed_for_tensorrt` (which the TensorRT INT8 build applies). Why it is not the CPU default, from ONNX Runtime's
  profiler on MobileNetV2-Linknet (2-core AMD EPYC, AVX2; scripts/bench_int8_profile.py): a symmetric activation
  range keeps the negative half, so no ReLU / Clip can be folded: 46 of them stay FP32 ops, each between a
  DequantizeLinear and a QuantizeLinear (62 DQ + 52 Q nodes after ONNX Runtime's fusions, against 16 + 6 with
  "asymmetric"); on Linknet those took about 40% of the INT8 run, and INT8 was slower than FP32 (0.92x in the
  issue's run). On MobileNetV2-Unet, whose time is in its large convolutions, the same scheme still ran 1.85x.
- "symmetric": signed activations, zero point 0, float biases: TensorRT's form as it is (slow on x86 CPUs).
Whatever the scheme, the nodes after the last convolution on the way to the outputs stay FP32 (`fp32_tail`: e.g. a
decision head's image logit, a second output channel), and the network output is never quantised by them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.export import common
from asset.export import onnx as onnx_export
from asset.export.common import INPUT_NAME, OUTPUT_NAME, Context
from asset.export.formats import ExportError
from asset.export.verify import check_set, compare, gate_options

FORMAT = "onnx-int8"
# name -> (activation type, ActivationSymmetric, QuantizeBias); weights are always signed, symmetric, per channel
SCHEMES = {
    "asymmetric": ("uint8", False, True),  # ONNX Runtime's x86 fast path (U8S8); not TensorRT's
    "symmetric": ("int8", True, False),  # TensorRT's as it is (S8S8, float biases); slow on x86 CPUs
    "symmetric-uint8": ("uint8", True, True),  # U8S8 with zero point 128: TensorRT's after `signed_for_tensorrt`
}
SCHEME = "asymmetric"  # what `asset export` writes unless told: the fastest under ONNX Runtime on the CPU
TARGETS = {"asymmetric": "onnxruntime-cpu", "symmetric-uint8": "tensorrt", "symmetric": "tensorrt"}
# op types kept FP32 per scheme: ONNX Runtime's CPU provider runs ConvTranspose in FP32 whatever the Q/DQ around it
# (no INT8 kernel); TensorRT has INT8 deconvolutions, so its schemes quantise it
FP32_OPS = {"asymmetric": ("ConvTranspose",), "symmetric-uint8": (), "symmetric": ()}


def export(model_dir: Path, *, precision: str, data, device: str, log, options: dict) -> dict:
    """Quantise (the recorded ONNX export, else a temporary one), verify, time, install and record."""
    ctx, opts = common.open_context(FORMAT, model_dir, precision=precision, data=data, options=options, log=log)
    with ctx:
        src = onnx_export.source(ctx, opts)
        tmp = ctx.stage("model-int8.onnx")
        scheme = options.get("scheme") or SCHEME
        if scheme not in SCHEMES:
            raise ExportError(f"unknown INT8 scheme {scheme!r}; valid: {', '.join(SCHEMES)} (asymmetric: ONNX Runtime "
                              "on the CPU, the default; symmetric-uint8: TensorRT)")
        facts = quantize(ctx, src, tmp, int(opts["calib_images"]), bool(opts["per_channel"]), scheme)
        int8 = common.ort_infer(tmp)
        # judged on enough defective images (verify.check_set: val, plus train when val has too few), by AP and
        # found defects as well as accuracy (verify.compare, module doc)
        inputs, check = check_set(ctx.card, ctx.data, int(opts["verify_images"]), log=log)
        figures = compare(int8, ctx.torch_infer, ctx.algorithm, inputs, exact=False, atol=opts["atol"],
                          max_drop=opts["max_accuracy_drop"], what=FORMAT, reference_name=common.PYTORCH, log=log,
                          check=check, **gate_options(options))
        fp32_ms, int8_ms = common.time_ms(common.ort_infer(src), ctx.sample), common.time_ms(int8, ctx.sample)
        facts["speed"] = {"shape": list(ctx.sample.shape), "fp32_ms": round(fp32_ms, 3),
                          "int8_ms": round(int8_ms, 3), "speedup": round(fp32_ms / int8_ms, 3)}
        ap = figures.get("ap_change")
        log(f"onnx-int8: {fp32_ms:.2f} ms fp32 -> {int8_ms:.2f} ms int8 ({fp32_ms / int8_ms:.2f}x) at batch 1 "
            f"{ctx.sample.shape[2]}x{ctx.sample.shape[3]}; accuracy change {figures['accuracy_change']:+.4f}, "
            f"pixel IoU change {figures['pixel_iou_change']:+.4f}, AP change "
            f"{'n/a' if ap is None else f'{ap:+.4f}'} on {figures['inputs']}")
        facts.update({"opset": opts["opset"], "input": {"name": INPUT_NAME}, "output": {"name": OUTPUT_NAME}})
        return ctx.install_and_record(FORMAT, tmp, facts=facts, figures=figures,
                                      versions=common.versions("torch", "onnx", "onnxruntime"))


# Compute ops: walking back from a graph output, the FP32 tail (`fp32_tail`) stops at the first of these.
SPATIAL_OPS = ("Conv", "ConvTranspose")
TAIL_LIMIT = 16  # nodes at most in the FP32 tail (a graph without convolutions is not quantised whole-sale)


def fp32_tail(model) -> list[str]:
    """Names of the nodes after the last convolution(s) on the way to the graph outputs, which stay FP32: whatever
    a model computes after its segmentation head (a decision head's image logit broadcast and concatenated as a
    second output channel, a pooling, a Gemm) is tiny, and 8-bit steps there would shift the image decision. For an
    output made by a convolution itself (the plain segmentation head) the tail is empty. A node that also feeds a
    convolution belongs to the quantised trunk, not to the tail."""
    producer = {o: n for n in model.graph.node for o in n.output}
    feeds_conv = {i for n in model.graph.node if n.op_type in SPATIAL_OPS for i in n.input}
    tail, seen = [], set()
    todo = [o.name for o in model.graph.output]
    while todo and len(tail) < TAIL_LIMIT:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type in SPATIAL_OPS or feeds_conv.intersection(node.output):
            continue
        seen.add(node.name)
        tail.append(node.name)
        todo += [i for i in node.input if i]
    return tail


def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def calibration_batches(ctx: Context, n: int) -> list[np.ndarray]:
    """Preprocessed training images (falls back to the verification split when there is no train split)."""
    from asset import scoring
    from asset.algorithm import load_image

    items = scoring.split_items(ctx.card, "train", ctx.data, limit=n) or ctx.items[:n]
    return [ctx.algorithm.preprocess([load_image(it.path)])[0] for it in items]


def quantize(ctx: Context, src: Path, dst: Path, calib_images: int, per_channel: bool, scheme: str = SCHEME) -> dict:
    """quantize_static (QDQ, MinMax calibration) of `src` into `dst`; returns the facts recorded ("quantisation")."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    activations, symmetric, quantize_bias = SCHEMES[scheme]
    batches = calibration_batches(ctx, calib_images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

        def rewind(self):
            self._it = iter(batches)

    import onnx

    pre = ctx.stage("preprocessed.onnx")
    try:
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # symbolic inference litters the cwd
            model = onnx.load(str(pre))
        except Exception as exc:  # noqa: BLE001 - pre-processing only helps: quantise the model as it is
            ctx.log(f"quant_pre_process failed ({exc}); quantising the model as exported")
            model = onnx.load(str(src))
        for i, node in enumerate(model.graph.node):  # exclusions go by node name
            node.name = node.name or f"{node.op_type}_{i}"
        onnx.save(model, str(pre))
        fp32_ops = sorted(set(FP32_OPS[scheme]) & {n.op_type for n in model.graph.node})
        tail = fp32_tail(model)
        op_types = sorted({n.op_type for n in model.graph.node} - set(fp32_ops))
        reduce_range = not cpu_has_vnni()
        try:
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=reduce_range, op_types_to_quantize=op_types, nodes_to_exclude=tail,
                            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                           "QuantizeBias": quantize_bias})
        except Exception as exc:
            raise ExportError(f"ONNX Runtime static quantisation failed: {exc}") from None
    finally:
        pre.unlink(missing_ok=True)
        for extra in dst.parent.glob("augmented_model*.onnx"):
            extra.unlink(missing_ok=True)
    return {"quantisation": {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                             "scheme": scheme, "target": TARGETS[scheme], "fp32_op_types": fp32_ops,
                             "fp32_nodes": tail, "per_channel": per_channel, "activations": activations,
                             "weights": "int8", "activation_symmetric": symmetric, "weight_symmetric": True,
                             "zero_point": (0 if activations == "int8" else 128) if symmetric else "calibrated",
                             "biases": "int32" if quantize_bias else "float",
                             "tensorrt": "as is" if SCHEMES[scheme] == SCHEMES["symmetric"] else
                             "after signed_for_tensorrt" if symmetric else "no",
                             "reduce_range": reduce_range, "calibration": "MinMax",
                             "calibration_images": len(batches), "calibration_split": "train"}}


def signed_for_tensorrt(path: Path):
    """The onnx-int8 model as TensorRT takes it (an onnx.ModelProto): signed INT8 Q/DQ with zero point 0 and float
    biases. Exact: a uint8 Q/DQ of zero point 128 becomes int8 with zero point 0 and the same scale (q - 128 is the
    same grid), an int32 bias behind DequantizeLinear becomes the float it dequantises to; a model already signed
    comes back unchanged. ExportError for an asymmetric model (no exact signed equivalent: re-export)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zps = {n.input[2] for n in qdq if len(n.input) > 2 and n.input[2]}
    uint8 = {name for name in zps if name in inits and inits[name].data_type == onnx.TensorProto.UINT8}
    asymmetric = sorted(name for name in uint8 if np.any(numpy_helper.to_array(inits[name]) != 128))
    if asymmetric:
        raise ExportError(f"{path}: {len(asymmetric)} uint8 zero points other than 128 (e.g. {asymmetric[0]}): an "
                          "asymmetric INT8 model (ONNX Runtime's CPU scheme) has no exact signed equivalent for "
                          "TensorRT: re-export it for TensorRT with `asset export --format onnx-int8 --scheme "
                          "symmetric-uint8` (asset/export/onnx_int8.py SCHEMES), or build --precision fp16")
    for name in uint8:
        zero = np.zeros(numpy_helper.to_array(inits[name]).shape, dtype=np.int8)
        inits[name].CopyFrom(numpy_helper.from_array(zero, name))
    retyped = {n.output[0] for n in qdq if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in uint8}
    for info in graph.value_info:
        if info.name in retyped:
            info.type.tensor_type.elem_type = onnx.TensorProto.INT8
    for n in [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and inits[n.input[0]].data_type == onnx.TensorProto.INT32]:
        q = numpy_helper.to_array(inits[n.input[0]]).astype(np.int64)
        scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        zp = numpy_helper.to_array(inits[n.input[2]]).astype(np.int64) if len(n.input) > 2 and n.input[2] else 0
        value = (q - zp).astype(np.float32) * scale  # as DequantizeLinear computes it
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), n.output[0]))
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model
