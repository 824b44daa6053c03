"""`asset export --format onnx`: the fp32 ONNX model, from PyTorch, verified against PyTorch under ONNX Runtime.

It is also the source of the other formats (onnx-int8 quantises it, OpenVINO converts it, TensorRT builds from it):
`source()` gives the recorded export, else a temporary one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.export import common
from asset.export.common import INPUT_NAME, OUTPUT_NAME, Context
from asset.export.formats import ExportError
from asset.export.verify import compare

FORMAT = "onnx"


def export(model_dir: Path, *, precision: str, data, device: str, log, options: dict) -> dict:
    """Export, check (+ simplify), verify against PyTorch, install exports/model.onnx and record it."""
    ctx, opts = common.open_context(FORMAT, model_dir, precision=precision, data=data, options=options, log=log)
    with ctx:
        tmp = ctx.stage("model.onnx")
        facts = make(ctx, tmp, opts["opset"], opts["simplify"], opts["dynamic"], opts["atol"])
        figures = compare(common.ort_infer(tmp), ctx.torch_infer, ctx.algorithm, ctx.inputs, exact=True,
                          atol=opts["atol"], max_drop=0, what=FORMAT, reference_name=common.PYTORCH, log=log)
        return ctx.install_and_record(FORMAT, tmp, facts=facts, figures=figures,
                                      versions=common.versions("torch", "onnx", "onnxruntime", "onnxslim"))


def source(ctx: Context, opts: dict) -> Path:
    """The fp32 ONNX file other formats start from: the recorded `onnx` export, else a temporary one (staged in
    the context, so removed when it closes)."""
    entry = (ctx.card.get("exports") or {}).get(FORMAT)
    if entry and (ctx.model_dir / entry["file"]).is_file():
        return ctx.model_dir / entry["file"]
    tmp = ctx.stage("source.onnx")
    ctx.log("exporting a temporary fp32 ONNX model first")
    make(ctx, tmp, opts["opset"], opts["simplify"], opts["dynamic"], opts["atol"])
    return tmp


def make(ctx: Context, path: Path, opset: int, simplify: bool, dynamic: bool, atol: float) -> dict:
    """Export + check (+ simplify) an fp32 ONNX file at `path`; returns its facts (dynamic axes, simplified).

    Tries, in order: the TorchScript exporter (dynamo=False, fast) with dynamic batch/H/W, then static H/W, then the
    dynamo exporter (needs onnxscript; handles e.g. PSPNet's/UPerNet's adaptive pooling at small sizes) dynamic,
    then static. An attempt counts when it exports, passes onnx.checker, runs in ONNX Runtime and - for dynamic
    H/W - reproduces PyTorch at a second size. Batch is always dynamic."""
    attempts = [(False, True), (False, False), (True, True), (True, False)]
    if not dynamic:
        attempts = [a for a in attempts if not a[1]]
    errors = []
    for dynamo, dynamic_hw in attempts:
        what = f"{'dynamo' if dynamo else 'TorchScript'} exporter, {'dynamic' if dynamic_hw else 'static'} H/W"
        try:
            _torch_export(ctx, path, opset, dynamic_hw, dynamo)
            simplified = _check_and_simplify(path, simplify, ctx.log)
            infer = common.ort_infer(path)
            infer(ctx.sample)
        except Exception as exc:  # noqa: BLE001 - try the next way
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            errors.append(f"{what}: {first}")
            ctx.log(f"onnx: {what} failed ({first})")
            continue
        if dynamic_hw and not _second_shape_ok(ctx, infer, atol):
            errors.append(f"{what}: does not reproduce PyTorch at another input size")
            ctx.log(f"onnx: {what} does not reproduce PyTorch at another input size")
            continue
        c, h, w = ctx.sample.shape[1:]
        return {"opset": max(opset, 18) if dynamo else opset, "simplified": simplified,
                "dynamic": {"batch": True, "height_width": dynamic_hw},
                "input": {"name": INPUT_NAME, "shape": ["batch", c, "height" if dynamic_hw else h,
                                                        "width" if dynamic_hw else w]},
                "output": {"name": OUTPUT_NAME},
                "exporter": f"torch.onnx.export ({'dynamo' if dynamo else 'TorchScript, dynamo=False'})"}
    raise ExportError("ONNX export failed every way: " + "; ".join(errors))


def _torch_export(ctx: Context, path: Path, opset: int, dynamic_hw: bool, dynamo: bool = False) -> None:
    import contextlib
    import io
    import warnings

    import torch

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(ctx.net, (torch.from_numpy(ctx.sample),), str(path), dynamo=dynamo,
                              opset_version=max(opset, 18) if dynamo else opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                              do_constant_folding=True, **({"verbose": False} if dynamo else {}))
    except Exception as exc:  # the message can hold the whole TorchScript graph: keep its first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"torch.onnx.export ({'dynamo' if dynamo else 'TorchScript'}, opset {opset}) failed: "
                          f"{first}") from None


def _check_and_simplify(path: Path, simplify: bool, log) -> bool:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejects the exported model: {exc}") from None
    if not simplify:
        return False
    try:
        import contextlib
        import io

        import onnxslim

        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(str(path))
        onnx.checker.check_model(slim)
        onnx.save(slim, str(path))
        return True
    except Exception as exc:  # simplification is optional: keep the checked model
        log(f"onnxslim could not simplify the model ({exc}); keeping it as exported")
        return False


def _second_shape_ok(ctx: Context, infer, atol: float) -> bool:
    """Dynamic H/W check: batch 2 at a size other than the one traced, against PyTorch."""
    d = ctx.algorithm.size_policy.divisor
    x = np.concatenate([ctx.sample, ctx.sample])
    x = np.pad(x, ((0, 0), (0, 0), (0, d), (0, 2 * d)), mode="edge")
    try:
        a, b = infer(x), ctx.torch_infer(x)
    except Exception:  # noqa: BLE001 - a model that cannot run at another size is not dynamic
        return False
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= atol * max(1.0, float(np.max(np.abs(b))))
