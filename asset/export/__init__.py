"""`asset export`: ONNX, ONNX INT8, OpenVINO and TensorRT exports written into the model directory.

    from asset.export import export_model
    entry = export_model(MODEL_DIR, "onnx")          # -> the record written into model.json["exports"]["onnx"]

One registry row per format (`asset.export.formats.FORMATS`) names the module that makes it (asset.export.onnx,
.onnx_int8, .openvino, .tensorrt); `export_model` looks the row up, rejects arguments the format cannot take, and
calls the module's `export`. Every export is staged inside MODEL_DIR, verified (`asset.export.verify.compare`)
against PyTorch (or, for TensorRT, built without torch, against the ONNX export), then moved into place
(os.replace) and recorded (model.json + SHA256SUMS). Importing this package imports neither torch nor any engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from asset.export.formats import FORMATS, ExportError, check_arguments, export_key, format_status, get_format

__all__ = ["FORMATS", "ExportError", "check_arguments", "export_key", "export_model", "format_status", "get_format"]


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def export_model(model_dir: str | os.PathLike, fmt: str, *, data=None, device: str | None = None,
                 log: Callable[[str], None] = _stderr, **options) -> dict:
    """Export MODEL_DIR to `fmt` (a FORMATS key). `options` are the format's arguments (None = default; `precision`
    among them for a format of several); `device` defaults to where the format is made (cpu, or cuda for a GPU
    format). Returns the record written to model.json["exports"][key]."""
    row = check_arguments(fmt, options)  # before any work
    precision = options.pop("precision", None) or row.precisions[0]
    return row.exporter()(Path(model_dir), precision=precision, data=data, device=device or row.device, log=log,
                          options=options)
