"""What each export format is, what it can take and whether this machine can produce it (no torch here).

Like Ultralytics' export table: every format knows its capabilities, and arguments a format cannot take are
rejected before any work starts (`check_arguments`).
"""

from __future__ import annotations

from dataclasses import dataclass

from asset.modeldir import EXPORT_KINDS, export_command, export_key  # noqa: F401 (export_key re-exported)


class ExportError(RuntimeError):
    """An export that cannot be made or failed its check; nothing was written. Says why (with the figures)."""


@dataclass(frozen=True)
class ExportFormat:
    name: str  # --format value
    title: str
    suffix: str  # file(s) written under MODEL_DIR/exports/
    requires: tuple[str, ...]  # importable modules needed to produce it
    precisions: tuple[str, ...]  # --precision values (first = default)
    gpu: bool  # needs a CUDA GPU to be produced
    args: frozenset[str]  # optional arguments this format takes
    backend: str  # the backend that runs it


COMMON = frozenset({"opset", "simplify", "dynamic", "atol", "verify_images"})
FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", "ONNX", "model.onnx", ("torch", "onnx", "onnxruntime"), ("fp32",), False,
                         COMMON, "onnxruntime"),
    "onnx-int8": ExportFormat("onnx-int8", "ONNX INT8 (QDQ, static)", "model-int8.onnx",
                              ("torch", "onnx", "onnxruntime"), ("int8",), False,
                              COMMON | {"calib_images", "per_channel", "max_accuracy_drop"}, "onnxruntime"),
    "openvino": ExportFormat("openvino", "OpenVINO IR", "openvino/model.xml", ("torch", "onnx", "openvino"),
                             ("fp32",), False, COMMON, "openvino"),
    "tensorrt": ExportFormat("tensorrt", "TensorRT engine", "model-<precision>.engine",
                             ("onnxruntime", "tensorrt", "cuda.bindings"),  # from the ONNX export, no torch
                             ("fp16", "fp32", "int8"), True,
                             COMMON | {"precision", "calib_images", "workspace", "max_batch", "max_accuracy_drop"},
                             "tensorrt"),
}

# model.json "exports" key -> how to make it; kept for asset/benchmark.py until it calls modeldir.export_command
EXPORT_COMMAND = {key: export_command(key, "{model}") for key in EXPORT_KINDS}

ONNX_OPSETS = range(13, 22)  # what the legacy exporter, onnxruntime 1.32 and OpenVINO / TensorRT all read
DEFAULT_OPSET = 17


def get_format(name: str) -> ExportFormat:
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
        return "no CUDA GPU (TensorRT builds an engine for the GPU it runs on)"
    return None


def status_table() -> str:
    """The export table for `asset export --help`: format, precisions, GPU, dynamic, available here."""
    rows = [("format", "precisions", "GPU", "dynamic shapes", "here")]
    for name, fmt in FORMATS.items():
        why = format_status(name)
        rows.append((name, ",".join(fmt.precisions), "yes" if fmt.gpu else "no",
                     "batch,H,W (profile)" if name == "tensorrt" else "batch,H,W", "yes" if why is None else f"no: {why}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def check_arguments(name: str, given: dict) -> ExportFormat:
    """Reject arguments `name` cannot take (given = the options the user set explicitly) before any work."""
    fmt = get_format(name)
    bad = sorted(k for k, v in given.items() if v is not None and k not in fmt.args)
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        takes = ", ".join("--" + k.replace("_", "-") for k in sorted(fmt.args))
        raise ExportError(f"format {name!r} does not take {flags} (it takes {takes})")
    precision = given.get("precision")
    if precision is not None and precision not in fmt.precisions:
        raise ExportError(f"format {name!r} builds {', '.join(fmt.precisions)}, not {precision}")
    opset = given.get("opset")
    if opset is not None and int(opset) not in ONNX_OPSETS:
        raise ExportError(f"opset {opset} is not supported: use {ONNX_OPSETS.start}..{ONNX_OPSETS.stop - 1} "
                          f"(default {DEFAULT_OPSET})")
    return fmt
