"""`asset benchmark`: every inference backend on this machine, one table + JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Backends (this machine):
{table}

Rows: backend x precision x batch; status ok / exported but wrong / failed (with the reason) / unavailable.
Accuracy and pixel IoU on --split through the shared pre/post-processing and scoring (asset/scoring.py): the
figures `asset evaluate --backend NAME:PRECISION --split SPLIT` reports in full (precision, recall, AP, ...).
Latency = model call on a preprocessed batch, per image, after warm-up (at least --min-iter calls and
--min-seconds). Writes OUT.md and OUT.json (machine, library versions, every figure), default
MODEL_DIR/evaluations/benchmark-HOST-TIME.

--speed-only needs no dataset (what a device image runs): latency and FPS on a random image at --size (default
the model's fixed or training size), every backend/precision the model has an export for; writes OUT.md and
OUT.json (schema asset-benchmark-speed/1: device description, machine, backend, precision, batch, ms, fps), default
MODEL_DIR/evaluations/speed-HOST-TIME: pass --out when the model directory is mounted read-only.

Examples:
  asset benchmark --model models/m
  asset benchmark --model models/m --backends onnxruntime,onnxruntime:int8,openvino --batch 1,4,8 --size 512x512
  asset benchmark --model /models/model --speed-only --size 512x512 --batch 1,4 --out /out/rpi4
"""


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def _table() -> str:
    from asset.backends import BACKENDS, backend_status

    st = backend_status()
    return "\n".join(f"  {n:<12} {','.join(s.precisions):<15} {'yes' if st[n] is None else 'no: ' + st[n]}"
                     for n, s in BACKENDS.items())


def register(sub) -> None:
    p = sub.add_parser(
        "benchmark", help="benchmark every inference backend on this machine (one table)",
        description="Speed, size and accuracy of a model directory on every backend and precision it can run.",
        epilog=EPILOG.format(table=_table()), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR", help="a model directory")
    p.add_argument("--backends", metavar="LIST", help="comma-separated NAME[:PRECISION], e.g. "
                   "pytorch,onnxruntime,onnxruntime:int8,openvino,tensorrt:fp16 (default: all)")
    p.add_argument("--batch", type=_batches, default=[1], metavar="1,4,8", help="batch sizes (default 1)")
    p.add_argument("--size", metavar="HxW", help="network input size for the latency runs (default: the split's "
                   "first image)")
    p.add_argument("--split", choices=["train", "val", "test"], help="split for accuracy/IoU (default val)")
    p.add_argument("--data", metavar="DATASET_DIR", help="dataset (default: the one in model.json)")
    p.add_argument("--limit", type=int, help="at most N images of the split")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] for pytorch / onnxruntime (tensorrt: cuda)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: usable cores)")
    p.add_argument("--min-iter", type=int, default=10, help="at least N timed calls per row (default 10)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="at least S seconds per row (default 2)")
    p.add_argument("--max-accuracy-drop", type=float,
                   help="int8/fp16 rows are 'exported but wrong' beyond this accuracy / IoU drop (default 0.02)")
    p.add_argument("--out", type=Path, help="output path without suffix (writes .md and .json)")
    p.add_argument("--speed-only", action="store_true", help="no dataset: latency and FPS on random input at --size "
                   "(for a device's figures)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import socket
    import sys
    import time

    from asset.backends import BackendError
    from asset.benchmark import parse_size, parse_targets, run_benchmark, to_markdown, write_results

    targets = parse_targets(args.backends)
    size = parse_size(args.size)
    if args.threads is not None and args.threads < 1 or args.min_iter < 1 or (args.limit is not None and args.limit < 1):
        raise BackendError("--threads, --min-iter and --limit must be >= 1")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    stamp = f"{socket.gethostname()}-{time.strftime('%Y%m%dT%H%M%S')}"
    if args.speed_only:
        from asset.benchmark import run_speed, speed_markdown, write_speed

        given = [f for f, v in (("--data", args.data), ("--split", args.split), ("--limit", args.limit),
                                ("--max-accuracy-drop", args.max_accuracy_drop)) if v is not None]
        if given:
            raise BackendError(f"--speed-only uses no dataset: {', '.join(given)} do not apply")
        doc = run_speed(args.model, targets, batches=args.batch, size=size, device=args.device, threads=args.threads,
                        min_iter=args.min_iter, min_seconds=args.min_seconds,
                        max_seconds=max(15.0, args.min_seconds * 2), log=log)
        md, js = _write(write_speed, doc, args.out or Path(args.model) / "evaluations" / f"speed-{stamp}")
        print(speed_markdown(doc))
        print(f"wrote {md} and {js}", file=sys.stderr)
        return 0
    doc = run_benchmark(args.model, targets, batches=args.batch, size=size, split=args.split or "val",
                        data=args.data, device=args.device, threads=args.threads, limit=args.limit,
                        min_iter=args.min_iter, min_seconds=args.min_seconds,
                        max_seconds=max(15.0, args.min_seconds * 2),
                        max_accuracy_drop=0.02 if args.max_accuracy_drop is None else args.max_accuracy_drop, log=log)
    out = args.out or Path(args.model) / "evaluations" / f"benchmark-{stamp}"
    md, js = write_results(doc, out)
    print(to_markdown(doc))
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


def _write(writer, doc: dict, out: Path):
    """writer(doc, out), with a clear message when OUT's folder cannot be written (a read-only model mount)."""
    from asset.backends import BackendError

    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        return writer(doc, out)
    except OSError as exc:
        raise BackendError(f"cannot write the results to {out} ({exc.strerror or exc}): pass --out PATH on a "
                           "writable folder") from None
