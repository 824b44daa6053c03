"""DAGM 2007 datatool: `datatool convert dagm --raw DAGM --out data [--classes 1,2,3]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from datatools.dagm.parser import parse_dagm
from datatools.records import Converter, ParsedDataset

__all__ = ["CONVERTER", "parse_dagm"]


def _classes(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class numbers like 1,2,3, got {text!r}") from None
    if not values or any(not 1 <= v <= 10 for v in values):
        raise argparse.ArgumentTypeError(f"class numbers must be in 1..10, got {text!r}")
    return values


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=_classes, default=None,
                        help="comma-separated class numbers to convert, e.g. 1,2,3 (default: every class present)")
    parser.add_argument("--test-fraction", type=_fraction, default=0.5,
                        help="development release only (it has no official split): share of each class and "
                        "label carved as test (default 0.5)")


def parse(raw: Path | None, args: argparse.Namespace) -> ParsedDataset:
    return parse_dagm(raw, getattr(args, "classes", None), test_fraction=getattr(args, "test_fraction", 0.5))


CONVERTER = Converter(
    name="dagm",
    help="DAGM 2007 (10 textures, weak ellipse labels); full release (ClassN/Train, ClassN/Test) or the "
    "older development release (ClassN, ClassN_def), detected automatically",
    add_arguments=add_arguments,
    parse=parse,
)
