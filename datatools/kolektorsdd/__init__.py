"""KolektorSDD datatool: `datatool convert kolektorsdd --raw KolektorSDD --out data`."""

from __future__ import annotations

import argparse
from pathlib import Path

from datatools.kolektorsdd.parser import ANNOTATIONS, parse_kolektorsdd
from datatools.records import Converter, ParsedDataset

__all__ = ["CONVERTER", "parse_kolektorsdd"]


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotation", choices=ANNOTATIONS, default="fine",
                        help="which annotation the raw folder holds: fine (crack-shaped) or box "
                        "(rectangles); same layout, recorded in the dataset's source (default fine)")
    parser.add_argument("--folds", type=int, default=3,
                        help="folder-wise cross-validation folds (default 3, the official protocol)")
    parser.add_argument("--test-fold", type=_non_negative, default=0,
                        help="the fold that becomes the test split; the others are train (default 0)")


def parse(raw: Path | None, args: argparse.Namespace) -> ParsedDataset:
    return parse_kolektorsdd(raw, annotation=args.annotation, folds=args.folds, test_fold=args.test_fold,
                             seed=args.seed)


CONVERTER = Converter(
    name="kolektorsdd",
    help="KolektorSDD (2019): kosNN/PartK.jpg + PartK_label.bmp; folder-wise folds, one fold is test",
    add_arguments=add_arguments,
    parse=parse,
)
