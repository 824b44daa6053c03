"""What a parser hands to the shared conversion pipeline.

A parser only reads the raw layout and says, per image, where the image and its mask are,
which group and official split it belongs to and what label the raw metadata declares.
Everything else (decoding, checks, RLE, splits, hashing, writing) is shared in `convert.py`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Ellipse:
    """An elliptic weak label (older DAGM release): centre, semi-axes in pixels, angle in radians."""

    cx: float
    cy: float
    semi_major: float
    semi_minor: float
    angle: float


@dataclass(frozen=True)
class RawSample:
    """One raw image as a parser found it.

    id:       unique and stable within the dataset, path-like ("Class1/Train/0595").
    image:    the raw image file; its bytes are copied unchanged into the dataset.
    group:    DAGM class, KolektorSDD `kosNN` folder, ...
    split:    the official split ("train" / "test"), or None when the raw data has none.
    mask:     a mask file (defect = any non-zero pixel after applying a palette), or None.
    ellipse:  an ellipse to rasterise as the mask (when there is no mask file).
    declared_defective: the label the raw metadata states, checked against the mask; None when
              the raw data has no label of its own (the mask decides).
    fold:     cross-validation fold, for datasets whose protocol uses folds.
    mask_labelled: False for an image labelled defective without a mask (image-level label; FORMAT.md): it is
              stored with an all-zero mask and `"mask_labelled": false`; needs declared_defective=True and
              neither mask nor ellipse.
    """

    id: str
    image: Path
    group: str
    split: str | None = None
    mask: Path | None = None
    ellipse: Ellipse | None = None
    declared_defective: bool | None = None
    fold: int | None = None
    mask_labelled: bool = True


@dataclass
class ParsedDataset:
    """A parser's whole answer: the samples plus what the dataset is and how splits work.

    group_is_unit: True when a group is one physical object (KolektorSDD `kosNN`) and must never
    be split across train/val/test; False when groups are classes (DAGM), so splits are
    stratified by group and label at image level.
    """

    name: str
    source: dict
    license: str
    samples: list[RawSample]
    group_is_unit: bool = False
    # Fraction of the samples without an official split that goes to test (older DAGM release).
    test_fraction: float = 0.0


@dataclass(frozen=True)
class Converter:
    """A registered datatool: its CLI options and its parse function."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    parse: Callable[[Path | None, argparse.Namespace], ParsedDataset]
    needs_raw: bool = True
    extra: dict = field(default_factory=dict)
