"""`asset evaluate`: metrics and a report of a model directory on one split of a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a model directory on a dataset split",
        description="Run the model over a split through the shared pre/post-processing and write metrics.json, "
        "report.md (metric table, worst false positives / negatives as overlays) and predictions.json. "
        "Refuses a model directory whose checksums do not match.",
    )
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR", help="a directory made by `asset train`")
    p.add_argument("--data", required=True, metavar="DATASET_DIR", help="dataset version directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate (default test)")
    p.add_argument("--out", type=Path, help="report directory (default MODEL_DIR/evaluations/NAME-VERSION-SPLIT)")
    p.add_argument("--image-threshold", type=_fraction, help="override the calibrated image threshold")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--worst", type=int, default=4, help="overlays per kind of error in the report (default 4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from asset import modeldir
    from asset.algorithm import Algorithm
    from asset.config import ConfigError

    if args.batch_size < 1 or args.worst < 0:
        raise ConfigError("--batch-size must be >= 1 and --worst >= 0")
    card = modeldir.verify(args.model)  # before any work: format and checksums
    from asset.training.data import DataError, open_dataset, split_samples

    version_dir, doc = open_dataset(args.data)
    samples = split_samples(version_dir, doc, args.split)
    if not samples:
        raise DataError(f"{version_dir}: the {args.split!r} split is empty")
    from asset.evaluation import compute_metrics, evaluate_samples, torch_runner, write_report
    from asset.models.factory import load_network

    net, card = load_network(args.model, verify=False)
    algorithm = Algorithm.from_card(card)
    threshold = algorithm.image_threshold if args.image_threshold is None else args.image_threshold
    runner = torch_runner(net)
    records = evaluate_samples(runner, algorithm, samples, args.batch_size, progress=sys.stderr.isatty())
    metrics = compute_metrics(records, threshold)
    metrics.update({"split": args.split, "dataset": {"name": doc["name"], "version": doc["version"]},
                    "model": {"arch": card["arch"], "encoder": card["encoder"]}, "backend": "pytorch",
                    "threshold_source": "override" if args.image_threshold is not None else "model card"})
    out = args.out or Path(args.model) / "evaluations" / f"{doc['name']}-{doc['version']}-{args.split}"
    report = write_report(out, metrics, records, samples, runner, algorithm,
                          f"{card['arch']}/{card['encoder']} on {doc['name']} {doc['version']} ({args.split})",
                          k=args.worst)
    keys = ("accuracy", "pixel_iou", "mean_iou_defective", "precision", "recall", "ap", "auroc")
    print(json.dumps({k: metrics[k] for k in keys}), file=sys.stderr)
    print(f"report: {report}", file=sys.stderr)
    print(out / "metrics.json")
    return 0
