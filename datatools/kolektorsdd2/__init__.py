"""KolektorSDD2 datatool: `datatool convert kolektorsdd2 --raw KolektorSDD2 --out data`."""

from __future__ import annotations

import argparse
from pathlib import Path

from datatools.kolektorsdd2.parser import parse_kolektorsdd2
from datatools.records import Converter, ParsedDataset

__all__ = ["CONVERTER", "parse_kolektorsdd2"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """KolektorSDD2 has no options of its own: the official train/test folders are the split."""


def parse(raw: Path | None, args: argparse.Namespace) -> ParsedDataset:
    return parse_kolektorsdd2(raw)


CONVERTER = Converter(
    name="kolektorsdd2",
    help="KolektorSDD2 (2021): train/ and test/ with NNNNN.png + NNNNN_GT.png; official split = folder",
    add_arguments=add_arguments,
    parse=parse,
)
