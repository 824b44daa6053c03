"""`datatool`: convert, validate, list, tag and report standard defect datasets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datatools
from datatools.errors import DatasetError
from datatools.registry import CONVERTERS, get_converter


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datatool",
        description="Turn raw public defect datasets (DAGM 2007, KolektorSDD, KolektorSDD2, or a "
        "synthetic set) into the standard versioned format described in datatools/FORMAT.md.",
    )
    parser.add_argument("--version", action="version", version=f"datatool {datatools.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="convert a raw dataset into ROOT/NAME/VERSION",
        description="Convert a raw download into ROOT/NAME/VERSION. Prints the version directory "
        "as the last line. Converting the same raw data with the same options again gives the "
        "same version.",
    )
    tools = convert.add_subparsers(dest="datatool", required=True, metavar="DATATOOL")
    for name in CONVERTERS:
        conv = get_converter(name)
        sub = tools.add_parser(name, help=conv.help, description=conv.help)
        sub.add_argument("--raw", type=Path, required=conv.needs_raw,
                         help="the raw dataset's top folder, as downloaded and unpacked"
                         if conv.needs_raw else "where to write the generated raw images (default: a temporary folder)")
        sub.add_argument("--out", type=Path, required=True, help="dataset root: the version is written to OUT/NAME/VERSION")
        sub.add_argument("--name", help=f"dataset name under OUT (default: {name})")
        sub.add_argument("--val-fraction", type=_fraction, default=0.2,
                         help="share of train carved off as validation, stratified by label (default 0.2)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the split carving (default 0)")
        sub.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all CPUs)")
        conv.add_arguments(sub)

    validate = commands.add_parser("validate", help="check a dataset version against its dataset.json")
    validate.add_argument("dir", type=Path, help="a version directory (or a tag / latest link)")
    validate.add_argument("--no-hashes", action="store_true", help="skip the image SHA-256 checks")

    listing = commands.add_parser("list", help="list dataset names, versions, tags and counts under ROOT")
    listing.add_argument("root", type=Path)

    tag = commands.add_parser("tag", help="name a dataset version (ROOT/NAME/TAG then points at it)")
    tag.add_argument("dir", type=Path, help="the version directory to tag")
    tag.add_argument("tag", help="e.g. paper-2022")

    report = commands.add_parser("report", help="write a self-contained HTML report of a dataset")
    report.add_argument("dir", type=Path, help="a version directory (or a tag / latest link)")
    report.add_argument("--output", type=Path, default=None, help="HTML file (default: DIR/report.html)")
    report.add_argument("--thumbnails", type=_positive_int, default=24, help="how many images in the grid (default 24)")
    return parser


def run_convert(args: argparse.Namespace) -> int:
    from datatools.convert import write_dataset

    conv = get_converter(args.datatool)
    if conv.needs_raw and not args.raw.is_dir():
        raise DatasetError(f"{args.raw}: raw dataset folder does not exist or is not a directory")
    parsed = conv.parse(args.raw, args)
    if args.name:
        parsed.name = args.name
    version_dir = write_dataset(parsed, args.out, raw=args.raw, val_fraction=args.val_fraction,
                                seed=args.seed, workers=args.workers)
    meta_counts = json.loads((version_dir / "dataset.json").read_text())["splits"]
    for split, c in meta_counts.items():
        print(f"{split:>5}: {c['images']:6d} images, {c['defective']:5d} defective", file=sys.stderr)
    print(version_dir)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from datatools.validate import validate_dataset

    problems = validate_dataset(args.dir, check_hashes=not args.no_hashes)
    if problems:
        for problem in problems[:50]:
            print(f"error: {problem}", file=sys.stderr)
        if len(problems) > 50:
            print(f"... and {len(problems) - 50} more", file=sys.stderr)
        print(f"{args.dir}: INVALID ({len(problems)} problems)", file=sys.stderr)
        return 1
    print(f"{args.dir}: valid")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from datatools.store import list_store

    rows = list_store(args.root)
    if not rows:
        print(f"{args.root}: no datasets")
        return 0
    header = f"{'NAME':<16} {'VERSION':<12} {'TAGS':<22} {'TRAIN':>11} {'VAL':>11} {'TEST':>11}"
    print(header)
    for r in rows:
        cells = [f"{r.splits.get(s, {}).get('images', 0)}/{r.splits.get(s, {}).get('defective', 0)}"
                 for s in ("train", "val", "test")]
        print(f"{r.name:<16} {r.version:<12} {','.join(r.tags) or '-':<22} {cells[0]:>11} {cells[1]:>11} {cells[2]:>11}")
    print("(counts are images/defective)")
    return 0


def run_tag(args: argparse.Namespace) -> int:
    from datatools.store import tag_version

    link = tag_version(args.dir, args.tag)
    print(link)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from datatools.report import write_report

    path = write_report(args.dir, output=args.output, thumbnails=args.thumbnails)
    print(path)
    return 0


COMMANDS = {"convert": run_convert, "validate": run_validate, "list": run_list, "tag": run_tag, "report": run_report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no version was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
