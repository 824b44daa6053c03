"""`asset export --format openvino`: the OpenVINO IR (model.xml + model.bin, fp32 weights) converted from the fp32
ONNX export, verified against PyTorch through the openvino backend."""

from __future__ import annotations

from pathlib import Path

from asset.export import common
from asset.export import onnx as onnx_export
from asset.export.formats import ExportError
from asset.export.verify import compare

FORMAT = "openvino"


def export(model_dir: Path, *, precision: str, data, device: str, log, options: dict) -> dict:
    """Convert, verify against PyTorch, install exports/openvino/ and record it."""
    import openvino as ov

    from asset.backends.ov import OpenVinoBackend

    ctx, opts = common.open_context(FORMAT, model_dir, precision=precision, data=data, options=options, log=log)
    with ctx:
        src = onnx_export.source(ctx, opts)
        tmpdir = ctx.stage("openvino", directory=True)
        try:
            ov.save_model(ov.convert_model(str(src)), str(tmpdir / "model.xml"), compress_to_fp16=False)
        except Exception as exc:
            raise ExportError(f"OpenVINO conversion failed: {exc}") from None
        backend = OpenVinoBackend(ctx.model_dir, ctx.card, file=tmpdir / "model.xml", threads=common.threads())
        try:
            figures = compare(backend.infer, ctx.torch_infer, ctx.algorithm, ctx.inputs, exact=True,
                              atol=opts["atol"], max_drop=0, what=FORMAT, reference_name=common.PYTORCH, log=log)
        finally:
            backend.close()
        facts = {"opset": opts["opset"], "ir": "model.xml + model.bin", "weights": "fp32"}
        return ctx.install_and_record(FORMAT, tmpdir, facts=facts, figures=figures,
                                      versions=common.versions("torch", "onnx", "openvino"))
