"""`asset evaluate`: metrics and a report of a model directory on one split of a dataset, on any backend."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
--backend NAME[:PRECISION] scores what that backend runs (default pytorch: weights.pt): onnxruntime (the onnx
export), onnxruntime:int8 (onnx-int8), openvino, openvino:int8, tensorrt:fp16 / fp32 / int8 (a GPU), pytorch:fp16
(a GPU). The images, batching and metrics are those of `asset benchmark` (asset/scoring.py), so its accuracy and
IoU columns for a backend equal this command's accuracy and pixel_iou on the same split. An export the model
directory lacks is an error that names the `asset export` command making it.

Without --data, the dataset recorded in the model card (model.json "dataset" "path") is used when it is still there;
--data points at a copy elsewhere or at another dataset (cross-dataset evaluation).

Examples:
  asset evaluate --model models/m --split test
  asset evaluate --model models/m --data data/synthetic/latest --split test
  asset evaluate --model models/m --backend onnxruntime:int8 --data data/synthetic/latest --split test
  asset evaluate --model models/m --backend tensorrt:fp16 --device cuda --data data/dagm/latest
"""


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a model directory (or one of its exports) on a dataset split",
        description="Run the model over a split through the shared pre/post-processing and write metrics.json, "
        "report.md (metric table, worst false positives / negatives as overlays) and predictions.json. "
        "Refuses a model directory whose checksums do not match.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR", help="a directory made by `asset train`")
    p.add_argument("--data", metavar="DATASET_DIR",
                   help="dataset version directory (default: the one the model was trained on, model.json "
                   "dataset.path, when it is still there)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate (default test)")
    p.add_argument("--backend", default="pytorch", metavar="NAME[:PRECISION]",
                   help="what runs the model (default pytorch); see below")
    p.add_argument("--device", help="cpu | cuda[:N] (default cpu; tensorrt: cuda)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: usable cores)")
    p.add_argument("--out", type=Path, help="report directory (default MODEL_DIR/evaluations/NAME-VERSION-SPLIT, "
                   "with -BACKEND-PRECISION unless pytorch fp32)")
    p.add_argument("--image-threshold", type=_fraction, help="override the calibrated image threshold")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 8, as the benchmark)")
    p.add_argument("--worst", type=int, default=4, help="overlays per kind of error in the report (default 4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from asset import modeldir, scoring
    from asset.algorithm import Algorithm
    from asset.backends import BackendError, load_backend
    from asset.benchmark import parse_targets
    from asset.config import ConfigError

    batch_size = scoring.DEFAULT_BATCH if args.batch_size is None else args.batch_size
    if batch_size < 1 or args.worst < 0 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--batch-size and --threads must be >= 1 and --worst >= 0")
    if "," in args.backend:
        raise BackendError(f"--backend takes one NAME[:PRECISION], got {args.backend!r}")
    [(name, precision)] = parse_targets(args.backend)
    card = modeldir.verify(args.model)  # before any work: format and checksums
    version_dir, doc = scoring.open_model_dataset(card, args.data)
    items = scoring.dataset_items(version_dir, doc, args.split)
    if not items:
        raise modeldir.ModelDirError(f"{version_dir}: the {args.split!r} split is empty")
    from asset.evaluation import compute_metrics, evaluate_samples, write_report

    device = args.device or ("cuda" if name == "tensorrt" else "cpu")
    backend = load_backend(name, args.model, precision=precision, device=device, threads=args.threads, card=card,
                           verify=False)
    try:
        algorithm = Algorithm.from_card(card)
        threshold = algorithm.image_threshold if args.image_threshold is None else args.image_threshold
        records = evaluate_samples(backend.infer, algorithm, items, batch_size, progress=sys.stderr.isatty())
        metrics = compute_metrics(records, threshold)
        metrics.update({"split": args.split, "dataset": {"name": doc["name"], "version": doc["version"]},
                        "model": {"arch": card["arch"], "encoder": card["encoder"]},
                        # nested: "precision" at the top is the classification precision
                        "backend": {"name": name, "precision": precision, "device": backend.device,
                                    "file": _relative(backend.file, args.model)},
                        "batch_size": batch_size,
                        "threshold_source": "override" if args.image_threshold is not None else "model card"})
        default = f"{doc['name']}-{doc['version']}-{args.split}"
        if (name, precision) != ("pytorch", "fp32"):
            default += f"-{name}-{precision}"
        out = args.out or Path(args.model) / "evaluations" / default
        what = "" if (name, precision) == ("pytorch", "fp32") else f", {name} {precision}"
        report = write_report(out, metrics, records, items, backend.infer, algorithm,
                              f"{card['arch']}/{card['encoder']}{what} on {doc['name']} {doc['version']} "
                              f"({args.split})", k=args.worst)
    finally:
        backend.close()
    keys = ("accuracy", "pixel_iou", "mean_iou_defective", "precision", "recall", "ap", "auroc")
    print(json.dumps({k: metrics[k] for k in keys}), file=sys.stderr)
    print(f"report: {report}", file=sys.stderr)
    print(out / "metrics.json")
    return 0


def _relative(path: Path | None, model_dir: Path) -> str | None:
    """The file a backend runs, relative to the model directory (as model.json records files)."""
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(Path(model_dir).resolve()).as_posix()
    except ValueError:
        return str(path)
