"""The registry of export formats: one row per format, one module per format (no torch here).

    FORMATS["onnx-int8"]          # ExportFormat(module="asset.export.onnx_int8", ...): .backend, .keys, .precisions
    get_format("onnx").exporter() # asset.export.onnx.export(model_dir, *, precision, data, device, log, options)

A row names the module that makes the format, what it needs, whether it needs a GPU and which optional arguments
it takes; what the format writes (model.json "exports" keys, files, precisions, the backend that runs them) is the
model directory's contract, `asset.modeldir.EXPORT_KINDS`, which the runtime backends read without importing this
package. Like Ultralytics' export table, every format knows its capabilities, and arguments a format cannot take are
rejected before any work starts (`check_arguments`). Adding a format: docs/architecture.md, "Adding an export format".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from asset.errors import AssetError
from asset.modeldir import EXPORT_KINDS, ExportKind, export_command, export_key, export_kinds  # noqa: F401


class ExportError(AssetError, RuntimeError):
    """An export that cannot be made or failed its check; nothing was written. Says why (with the figures)."""


@dataclass(frozen=True)
class ExportFormat:
    name: str  # --format value; its model.json keys, files, precisions and backend are EXPORT_KINDS' of this format
    title: str
    module: str  # the exporter module: `export(model_dir, *, precision, data, device, log, options) -> dict`
    requires: tuple[str, ...]  # importable modules needed to produce it
    gpu: bool  # needs a CUDA GPU to be produced
    args: frozenset[str]  # optional arguments this format takes (besides --precision when it has several)
    shapes: str = "batch,H,W"  # dynamic input dimensions of what it writes (for the table)

    @property
    def kinds(self) -> list[ExportKind]:
        """What this format writes, default precision first (asset.modeldir.EXPORT_KINDS)."""
        return export_kinds(self.name)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k.key for k in self.kinds)

    @property
    def precisions(self) -> tuple[str, ...]:
        """--precision values (first = default)."""
        return tuple(k.precision for k in self.kinds)

    @property
    def backend(self) -> str:
        """The backend that runs it."""
        return self.kinds[0].backend

    @property
    def device(self) -> str:
        """Where it is produced unless told (--device)."""
        return "cuda" if self.gpu else "cpu"

    def exporter(self) -> Callable[..., dict]:
        """The format module's `export` function (imported now: it may import torch or an engine)."""
        return importlib.import_module(self.module).export


COMMON = frozenset({"opset", "simplify", "dynamic", "atol", "verify_images"})
GATE = frozenset({"max_ap_drop", "max_lost_defects"})  # the reduced-precision gate's rules (asset/export/verify.py)
FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", "ONNX", "asset.export.onnx", ("torch", "onnx", "onnxruntime"), False, COMMON),
    "onnx-int8": ExportFormat("onnx-int8", "ONNX INT8 (QDQ, static)", "asset.export.onnx_int8",
                              ("torch", "onnx", "onnxruntime"), False,
                              COMMON | GATE | {"calib_images", "per_channel", "max_accuracy_drop", "scheme"}),
    "openvino": ExportFormat("openvino", "OpenVINO IR", "asset.export.openvino", ("torch", "onnx", "openvino"),
                             False, COMMON),
    "tensorrt": ExportFormat("tensorrt", "TensorRT engine", "asset.export.tensorrt",
                             ("onnxruntime", "tensorrt", "cuda.bindings"), True,  # from the ONNX export, no torch
                             COMMON | {"calib_images", "workspace", "max_batch", "max_accuracy_drop"},
                             "batch,H,W (profile)"),
}

# model.json "exports" key -> how to make it; kept for asset/benchmark.py until it calls modeldir.export_command
EXPORT_COMMAND = {key: export_command(key, "{model}") for key in EXPORT_KINDS}

ONNX_OPSETS = range(13, 22)  # what the legacy exporter, onnxruntime 1.32 and OpenVINO / TensorRT all read
DEFAULT_OPSET = 17


def get_format(name: str) -> ExportFormat:
    """The registry row of `name`; ExportError listing every format otherwise."""
    if name not in FORMATS:
        raise ExportError(f"unknown export format {name!r}; valid: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_status(name: str) -> str | None:
    """None when this machine can produce `name`, else why not."""
    from asset.backends import cuda_device_count, installed

    fmt = get_format(name)
    missing = [m for m in fmt.requires if not installed(m)]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if fmt.gpu and not cuda_device_count():
        return f"no CUDA GPU (a {fmt.title} is built on the GPU it runs on)"
    return None


def status_table() -> str:
    """The export table for `asset export --help`: format, precisions, GPU, dynamic, available here."""
    rows = [("format", "precisions", "GPU", "dynamic shapes", "here")]
    for name, fmt in FORMATS.items():
        why = format_status(name)
        rows.append((name, ",".join(fmt.precisions), "yes" if fmt.gpu else "no",
                     fmt.shapes, "yes" if why is None else f"no: {why}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def check_arguments(name: str, given: dict) -> ExportFormat:
    """Reject arguments `name` cannot take (given = the options the user set explicitly) before any work."""
    fmt = get_format(name)
    takes = fmt.args | ({"precision"} if len(fmt.precisions) > 1 else set())
    bad = sorted(k for k, v in given.items() if v is not None and k not in takes)
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise ExportError(f"format {name!r} does not take {flags} (it takes "
                          f"{', '.join('--' + k.replace('_', '-') for k in sorted(takes)) or 'no options'})")
    precision = given.get("precision")
    if precision is not None and precision not in fmt.precisions:
        raise ExportError(f"format {name!r} builds {', '.join(fmt.precisions)}, not {precision}")
    opset = given.get("opset")
    if opset is not None and int(opset) not in ONNX_OPSETS:
        raise ExportError(f"opset {opset} is not supported: use {ONNX_OPSETS.start}..{ONNX_OPSETS.stop - 1} "
                          f"(default {DEFAULT_OPSET})")
    return fmt
