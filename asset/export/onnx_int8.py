"""`asset export --format onnx-int8`: static INT8 quantisation of the fp32 ONNX model (QDQ), calibrated on training
images, verified against PyTorch with the accuracy gate, timed against the fp32 model.

One calibration serves ONNX Runtime and TensorRT: activations and weights are signed INT8, symmetric (zero point
0), the only Q/DQ TensorRT accepts, so `asset export --format tensorrt --precision int8` builds from this file.
The scheme is recorded in model.json exports["onnx-int8"].quantisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.export import common, onnx
from asset.export.common import INPUT_NAME, OUTPUT_NAME, Context
from asset.export.formats import ExportError
from asset.export.verify import compare

FORMAT = "onnx-int8"
# name -> (activation type, ActivationSymmetric); weights are always signed, symmetric INT8
SCHEMES = {"symmetric": ("int8", True), "asymmetric": ("uint8", False)}
SCHEME = "symmetric"  # what `asset export` writes (TensorRT reads only this one)


def export(model_dir: Path, *, precision: str, data, device: str, log, options: dict) -> dict:
    """Quantise (the recorded ONNX export, else a temporary one), verify, time, install and record."""
    ctx, opts = common.open_context(FORMAT, model_dir, precision=precision, data=data, options=options, log=log)
    with ctx:
        src = onnx.source(ctx, opts)
        tmp = ctx.stage("model-int8.onnx")
        facts = quantize(ctx, src, tmp, int(opts["calib_images"]), bool(opts["per_channel"]))
        int8 = common.ort_infer(tmp)
        figures = compare(int8, ctx.torch_infer, ctx.algorithm, ctx.inputs, exact=False, atol=opts["atol"],
                          max_drop=opts["max_accuracy_drop"], what=FORMAT, reference_name=common.PYTORCH, log=log)
        fp32_ms, int8_ms = common.time_ms(common.ort_infer(src), ctx.sample), common.time_ms(int8, ctx.sample)
        facts["speed"] = {"shape": list(ctx.sample.shape), "fp32_ms": round(fp32_ms, 3),
                          "int8_ms": round(int8_ms, 3), "speedup": round(fp32_ms / int8_ms, 3)}
        log(f"onnx-int8: {fp32_ms:.2f} ms fp32 -> {int8_ms:.2f} ms int8 ({fp32_ms / int8_ms:.2f}x) at batch 1 "
            f"{ctx.sample.shape[2]}x{ctx.sample.shape[3]}; accuracy change {figures['accuracy_change']:+.4f}, "
            f"pixel IoU change {figures['pixel_iou_change']:+.4f}")
        facts.update({"opset": opts["opset"], "input": {"name": INPUT_NAME}, "output": {"name": OUTPUT_NAME}})
        return ctx.install_and_record(FORMAT, tmp, facts=facts, figures=figures,
                                      versions=common.versions("torch", "onnx", "onnxruntime"))


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

    activations, symmetric = SCHEMES[scheme]
    batches = calibration_batches(ctx, calib_images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

        def rewind(self):
            self._it = iter(batches)

    pre = ctx.stage("preprocessed.onnx")
    try:
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # symbolic inference litters the cwd
            model_in = pre
        except Exception as exc:  # noqa: BLE001 - pre-processing only helps: quantise the model as it is
            ctx.log(f"quant_pre_process failed ({exc}); quantising the model as exported")
            model_in = src
        reduce_range = not cpu_has_vnni()
        try:
            quantize_static(str(model_in), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=reduce_range,
                            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        except Exception as exc:
            raise ExportError(f"ONNX Runtime static quantisation failed: {exc}") from None
    finally:
        pre.unlink(missing_ok=True)
        for extra in dst.parent.glob("augmented_model*.onnx"):
            extra.unlink(missing_ok=True)
    return {"quantisation": {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                             "scheme": scheme, "per_channel": per_channel, "activations": activations,
                             "weights": "int8", "activation_symmetric": symmetric, "weight_symmetric": True,
                             "zero_point": 0 if symmetric else "calibrated (activations)",
                             "tensorrt": symmetric, "reduce_range": reduce_range, "calibration": "MinMax",
                             "calibration_images": len(batches), "calibration_split": "train"}}
