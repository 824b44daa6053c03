"""Folder datatool, for your own parts: `datatool convert folder --raw DIR --out data [--masks DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from datatools.folder.parser import DEFAULT_LICENSE, parse_folder
from datatools.records import Converter, ParsedDataset

__all__ = ["CONVERTER", "parse_folder"]


def _test_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--good", default="good", metavar="DIR",
                        help="folder of OK images, relative to --raw or absolute (default good)")
    parser.add_argument("--defective", default="defective", metavar="DIR",
                        help="folder of defective images, relative to --raw or absolute (default defective)")
    parser.add_argument("--masks", default=None, metavar="DIR",
                        help="folder of masks (PNG/BMP, any non-zero pixel = defect), relative to --raw or absolute; "
                        "a mask is matched to the image of the same name (plus --mask-suffix), at the same relative "
                        "path, under good/ or defective/, or flat. Without masks (or without one for an image) a "
                        "defective image is an image-level label (default: no masks)")
    parser.add_argument("--mask-suffix", default="", metavar="TEXT",
                        help="what a mask's name adds to its image's, e.g. _mask for part7.jpg -> part7_mask.png "
                        "(default: nothing)")
    parser.add_argument("--group-regex", default=None, metavar="REGEX",
                        help="when several images show one physical part: a regular expression searched in each "
                        "image's path inside its class folder whose group 'group' (or first group, or whole match) "
                        "names the part, e.g. '^(part\\d+)_'; whole parts then go to train, val or test "
                        "(default: images are independent, splits stratified by label)")
    parser.add_argument("--test-fraction", type=_test_fraction, default=0.2,
                        help="share of the images (or parts) carved off as test before val is carved (default 0.2)")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="the licence recorded in dataset.json")


def parse(raw: Path | None, args: argparse.Namespace) -> ParsedDataset:
    return parse_folder(raw, good=args.good, defective=args.defective, masks=args.masks,
                        mask_suffix=args.mask_suffix, group_regex=args.group_regex,
                        test_fraction=args.test_fraction, license=args.license)


CONVERTER = Converter(
    name="folder",
    help="your own images: good/ and defective/ folders, masks optional (--masks); image-level labels kept",
    add_arguments=add_arguments,
    parse=parse,
)
