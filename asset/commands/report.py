"""`asset report`: the sweep's tables, Pareto fronts, recommendation and device rank correlations."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Per dataset: the top 5 models by test accuracy and the top 5 by inference time on the reference device (columns:
rank, test accuracy (%), test IoU, validation accuracy (%), validation IoU, Encoder-Decoder, one ms column per
device and backend), '-' with a footnote where a model has no figure; median and mean accuracy; for each device the
accuracy-vs-latency Pareto front (table and PNG); with --budget-ms and --device the most accurate model within the
budget, the runner-up and the more accurate model over it; Spearman rank correlation of speed between devices.

Devices: the sweep's own benchmark (its benchmark.device label), plus each --benchmarks file: JSON written by
`asset benchmark` (asset-benchmark/1) or `asset benchmark --speed-only` (asset-benchmark-speed/1), one model each,
matched by arch and encoder (and dataset when the file names one). LABEL=PATH names the device (PATH may be a
folder of JSON files); otherwise the file's device description is used. A column is LABEL:BACKEND[-PRECISION];
--device takes a column or a label with one column. Unusable input is listed under "Left out".

Example:
  asset report sweeps/dagm --benchmarks rpi4=bench/rpi4 xeon=bench/xeon --out reports/dagm --budget-ms 50 --device rpi4
"""


def register(sub) -> None:
    p = sub.add_parser("report", help="tables, Pareto fronts and a recommendation from a sweep directory",
                       description="Build report.md, report.html (self-contained) and report.json from SWEEP_DIR.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="a directory made by `asset sweep`")
    p.add_argument("--benchmarks", nargs="*", default=[], metavar="[LABEL=]JSON",
                   help="benchmark JSON files or folders from other devices")
    p.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR", help="where the report is written")
    p.add_argument("--budget-ms", type=float, help="latency budget in ms per image for the recommendation")
    p.add_argument("--device", help="device (column or label) the budget applies to")
    p.add_argument("--reference", help="device column of the speed table (default: the first column)")
    p.add_argument("--no-verify", action="store_true", help="do not check the model directories' checksums")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from asset.report.collect import ReportError, read_benchmarks, read_sweep
    from asset.report.render import build, write_report

    if args.budget_ms is not None and args.budget_ms <= 0:
        raise ReportError("--budget-ms must be > 0")
    c = read_sweep(args.sweep_dir, verify=not args.no_verify)
    read_benchmarks(c, args.benchmarks)
    if not c.models:
        print(f"warning: {args.sweep_dir} has no finished model; the report lists what is left out", file=sys.stderr)
    b, data = build(c, args.budget_ms, args.device, args.reference)
    paths = write_report(b, data, args.out)
    for line in c.left_out:
        print(f"left out: {line}", file=sys.stderr)
    print(paths["html"])
    return 0
