"""`asset predict`: decisions and scores of a model on images, folders, globs, video files, streams and cameras."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
SOURCE is one of:
  part.png                  an image file (.png .bmp .jpg .jpeg .tif .tiff .webp)
  parts/                    a folder, searched recursively (rows named by the path inside it)
  'parts/**/*.png'          a glob (quote it, so the shell leaves it to asset)
  line3.avi                 a video file (.avi .mp4 .mkv .mov ...; every --stride-th frame)
  rtsp://host:8554/cam      a stream OpenCV's FFmpeg reads (rtsp, rtmp, http(s), udp, tcp); credentials in the URL
                            are not written to the rows
  0                         a camera index (V4L2 /dev/video0)

One row per image or frame: name, frame, time_s, width, height, defective, value (what the image threshold is
compared with: the defect fraction, or the decision head's score), threshold, score, defect_fraction, max_prob,
overlay, error. Rows are flushed as written, to --out (.csv, or .jsonl) or stdout: Ctrl-C stops the run and leaves
every finished row (and overlay) intact; the exit code is then 130. An image that does not decode gets a row with its
error, a warning, and exit code 1 at the end.

--save DIR writes overlays (predicted defect pixels in red, the decision and its value in a banner): one PNG per
image (DIR/<path in the folder>.png), one MJPG video per video, stream or camera (DIR/<name>.overlay.avi, renamed
into place when the run ends or is interrupted).

--backend NAME[:PRECISION] as in `asset evaluate` (default pytorch; onnxruntime, onnxruntime:int8, openvino,
tensorrt:fp16 ... run an export, see `asset export`).

Examples:
  asset predict --model models/m parts/ --out predictions.csv --save overlays/
  asset predict --model models/m 'incoming/*.jpg' --backend onnxruntime --out today.jsonl
  asset predict --model models/m line3.avi --stride 5 --out line3.csv --save overlays/
  asset predict --model models/m rtsp://camera.local:8554/line3 --backend onnxruntime --out live.csv
  asset predict --model models/m 0 --max-frames 100
"""


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="decisions and scores on images, folders, globs, videos, streams or cameras (no labels)",
        description="Run a model directory (or one of its exports) on unlabelled images or video through the shared "
        "pre/post-processing and write one row per image or frame. Refuses a model directory whose checksums do not "
        "match.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="image, folder, glob, video file, stream URL or camera index")
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR", help="a directory made by `asset train`")
    p.add_argument("--out", type=Path, help="rows to this file, .csv or .jsonl (default: CSV on stdout)")
    p.add_argument("--format", choices=["csv", "jsonl"], help="row format (default: by --out's suffix, else csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--save", type=Path, metavar="DIR", help="write overlays into DIR")
    p.add_argument("--backend", default="pytorch", metavar="NAME[:PRECISION]",
                   help="what runs the model (default pytorch), as in `asset evaluate`")
    p.add_argument("--device", help="cpu | cuda[:N] (default cpu; tensorrt: cuda)")
    p.add_argument("--threads", type=_positive, help="intra-op threads (default: usable cores)")
    p.add_argument("--batch-size", type=_positive, default=8,
                   help="images per forward pass for folders, globs and video files (default 8; streams and cameras "
                   "run one frame at a time)")
    p.add_argument("--image-threshold", type=_fraction, help="override the model's image threshold")
    p.add_argument("--stride", type=_positive, default=1, help="videos, streams, cameras: every Nth frame (default 1)")
    p.add_argument("--max-frames", type=_positive, help="videos, streams, cameras: stop after this many frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: on when stderr is a terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys

    from asset import predict
    from asset.backends import BackendError
    from asset.benchmark import parse_targets
    from asset.predictor import Predictor

    if "," in args.backend:
        raise BackendError(f"--backend takes one NAME[:PRECISION], got {args.backend!r}")
    [(name, precision)] = parse_targets(args.backend)
    if args.out is not None and args.out.exists() and not args.overwrite:  # before loading anything
        raise predict.PredictError(f"{args.out}: already exists; pass --overwrite to replace it, or another --out")
    source = predict.open_source(args.source, stride=args.stride, max_frames=args.max_frames)
    device = args.device or ("cuda" if name == "tensorrt" else "cpu")
    try:
        predictor = Predictor(args.model, backend=name, batch_size=args.batch_size, precision=precision,
                              device=device, threads=args.threads)
    except BaseException:
        source.close()
        raise
    # SIGTERM (docker stop, kill) stops like Ctrl-C: the rows so far stay, the overlay video is closed
    previous = signal.getsignal(signal.SIGTERM)

    def _term(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread (tests calling main from a thread)
        previous = None
    try:
        with predictor:
            rows = predict.RowWriter(args.out, args.format, overwrite=args.overwrite)
            progress = not args.no_progress and sys.stderr.isatty()
            summary = predict.run(predictor, source, rows, save=args.save, batch_size=args.batch_size,
                                  image_threshold=args.image_threshold, progress=progress)
    finally:
        source.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    where = f" -> {args.out}" if args.out else ""
    rate = f", {summary.fps:.1f} {'frames' if source.kind in ('video', 'stream', 'camera') else 'images'}/s"
    print(f"{source.kind} {source.name}: {summary.predicted} predicted, {summary.defective} defective"
          f"{f', {summary.errors} unreadable' if summary.errors else ''}{rate}{where}", file=sys.stderr)
    if summary.video_overlay:
        print(f"overlay video: {summary.video_overlay}", file=sys.stderr)
    elif args.save:
        print(f"overlays: {args.save}", file=sys.stderr)
    if summary.interrupted:
        print(f"interrupted: {summary.rows} row(s) written{where}, each complete", file=sys.stderr)
        return 130
    return 1 if summary.errors else 0
