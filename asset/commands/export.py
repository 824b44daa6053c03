"""`asset export`: write ONNX / ONNX INT8 / OpenVINO / TensorRT exports into a model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Formats (this machine):
{table}

Every export is verified against PyTorch on validation images of the dataset the model was trained on (model.json
dataset.path, or --data): fp32 formats need max |logit diff| <= atol x max(1, |logit|) and identical image
decisions; onnx-int8 is judged on a check set of validation images, plus training images when validation holds
fewer than 20 defective ones (never test images; recorded as verification.check_set): accuracy and pixel IoU may
drop by <= --max-accuracy-drop (0.02), the AP of the image score by <= --max-ap-drop (0.01), and no defective image
PyTorch finds may be missed (--max-lost-defects 0); tensorrt fp16/int8 apply the same AP and lost-defect defaults
on the validation images. A failing export is not written. Files go
to MODEL_DIR/exports/ and are recorded in model.json "exports" (and SHA256SUMS).

tensorrt needs no torch: the engine is built from the model directory's ONNX export (make that first, where torch
is installed), on the machine that will run it (a Jetson: inside the jetson image), and verified against the ONNX
model under ONNX Runtime - on the dataset's validation images when the dataset can be read there, else on random
images (--data points at a copy of the dataset).

Examples:
  asset export --model models/m --format onnx
  asset export --model models/m --format onnx-int8 --calib-images 64
  asset export --model models/m --format onnx-int8 --scheme symmetric-uint8   (for TensorRT INT8 engines)
  asset export --model models/m --format openvino
  asset export --model models/m --format tensorrt --precision fp16     (on the machine with the NVIDIA GPU)
"""

# the format options this command has flags for (a format takes those its FORMATS row lists)
OPTIONS = ("precision", "opset", "simplify", "dynamic", "atol", "verify_images", "calib_images", "per_channel",
           "max_accuracy_drop", "max_ap_drop", "max_lost_defects", "scheme", "workspace", "max_batch")


def register(sub) -> None:
    from asset.export.formats import FORMATS, status_table

    p = sub.add_parser(
        "export", help="export a model directory to ONNX, ONNX INT8, OpenVINO or TensorRT",
        description="Export a trained model directory for inference; arguments a format cannot take are rejected "
        "before any work.",
        epilog=EPILOG.format(table=status_table()), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR", help="a directory made by `asset train`")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="export format (table below)")
    p.add_argument("--data", metavar="DATASET_DIR", help="dataset for verification/calibration (default: the one in "
                   "model.json)")
    multi = {n: f.precisions for n, f in FORMATS.items() if len(f.precisions) > 1}
    p.add_argument("--precision", choices=sorted({q for f in FORMATS.values() for q in f.precisions}),
                   help="formats of several precisions: " + "; ".join(f"{n} {', '.join(q)} (default {q[0]})"
                                                                      for n, q in multi.items()))
    p.add_argument("--opset", type=int, help="ONNX opset (default 17; 13..21)")
    p.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=None,
                   help="simplify the ONNX graph with onnxslim (default on)")
    p.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=None,
                   help="dynamic height/width where the architecture allows (batch is always dynamic; default on)")
    p.add_argument("--atol", type=float, help="logit tolerance, relative to max(1, |logit|) (default 1e-3)")
    p.add_argument("--verify-images", type=int,
                   help="validation images to verify on (default 128: an accuracy change needs more than a handful)")
    p.add_argument("--calib-images", type=int, help="onnx-int8 / tensorrt int8: training images to calibrate on "
                   "(default 32)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="onnx-int8: per-channel weight scales (default on)")
    p.add_argument("--scheme", choices=("asymmetric", "symmetric-uint8", "symmetric"),
                   help="onnx-int8: quantisation scheme per target: asymmetric (ONNX Runtime on the CPU, the fastest "
                   "there; default), symmetric-uint8 (TensorRT INT8 engines are built from it)")
    p.add_argument("--max-accuracy-drop", type=float, help="onnx-int8 / tensorrt fp16,int8: largest accepted drop of "
                   "accuracy and pixel IoU (default 0.02)")
    p.add_argument("--max-ap-drop", type=float, help="onnx-int8: largest accepted drop of the AP "
                   "of the image score on the check set (default 0.01)")
    p.add_argument("--max-lost-defects", type=int, help="onnx-int8: defective check images the "
                   "reference finds that the export may miss (default 0: a quantised model that loses a found defect "
                   "is refused)")
    p.add_argument("--workspace", type=float, help="tensorrt: builder workspace in GiB (default 4)")
    p.add_argument("--max-batch", type=int, help="tensorrt: largest batch of the optimisation profile (default 16)")
    p.add_argument("--device", default=None, help="GPU formats (tensorrt): cuda or cuda:N (default cuda)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from asset.export import export_model
    from asset.export.formats import ExportError, check_arguments

    given = {k: getattr(args, k) for k in OPTIONS}
    row = check_arguments(args.format, given)  # rejected before anything is loaded
    if args.device is not None and not row.gpu:
        raise ExportError(f"format {args.format!r} does not take --device (it runs on the CPU)")
    for k in ("verify_images", "calib_images", "max_batch"):
        if given[k] is not None and given[k] < 1:
            raise ExportError(f"--{k.replace('_', '-')} must be >= 1")
    for k in ("max_ap_drop", "max_lost_defects", "max_accuracy_drop"):
        if given[k] is not None and given[k] < 0:
            raise ExportError(f"--{k.replace('_', '-')} must be >= 0")
    entry = export_model(args.model, args.format, data=args.data, device=args.device,
                         **{k: v for k, v in given.items() if v is not None})
    print(json.dumps({"file": str(Path(args.model) / entry["file"]), "verification": entry["verification"]}))
    return 0
