"""KolektorSDD (2019) raw layout -> ParsedDataset.

    kos01/ .. kos50/      at the top of the archive
      PartK.jpg           K = 0..7, parts missing in places (never assume 8)
      PartK_label.bmp     8-bit palettised BMP: defect = luminance after the palette > 0

Protocol: cross-validation by folder. Folders are spread over `folds` folds (folders holding a
defect first, round robin after a seeded shuffle, so every fold gets its share of defects); the
`test_fold` becomes test, the others train, and val is carved from train by whole folders.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from datatools.errors import DatasetError
from datatools.imageio import decode_image_bytes
from datatools.records import ParsedDataset, RawSample
from datatools.splits import assign_folds

NAME = "kolektorsdd"
URL = "https://www.vicos.si/resources/kolektorsdd/"
LICENSE = "CC BY-NC-SA 4.0 (KolektorSDD: Tabernik, Sela, Skvarc, Skocaj 2019; Kolektor Group d.o.o. / ViCoS)"
ANNOTATIONS = ("fine", "box")
FOLDER_RE = re.compile(r"^kos\d+$", re.IGNORECASE)
IMAGE_RE = re.compile(r"^Part(\d+)\.jpe?g$", re.IGNORECASE)
MASK_RE = re.compile(r"^Part(\d+)_label\.bmp$", re.IGNORECASE)
EXPECTED_LAYOUT = "expected the KolektorSDD top folder holding kos01/ .. kos50/, each with PartK.jpg + PartK_label.bmp"


def mask_has_defect(path: Path) -> bool:
    """Any non-zero pixel after applying the palette (the same rule as the conversion)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: mask cannot be read ({exc.strerror or exc})") from None
    img = decode_image_bytes(data, path)
    return bool((np.asarray(img if img.mode == "L" else img.convert("L")) > 0).any())


def _scan_folder(folder: Path) -> list[tuple[Path, Path]]:
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_file():
            continue
        if m := IMAGE_RE.match(entry.name):
            images[int(m.group(1))] = entry
        elif m := MASK_RE.match(entry.name):
            masks[int(m.group(1))] = entry
    pairs = []
    for k in sorted(images):
        if k not in masks:
            raise DatasetError(f"{folder / f'Part{k}_label.bmp'}: mask of {images[k].name} is missing")
        pairs.append((images[k], masks.pop(k)))
    if masks:
        orphan = masks[min(masks)]
        raise DatasetError(f"{orphan}: mask without its image Part{min(masks)}.jpg")
    return pairs


def parse_kolektorsdd(raw: Path, *, annotation: str = "fine", folds: int = 3, test_fold: int = 0,
                      seed: int = 0) -> ParsedDataset:
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetError(f"{raw}: raw dataset folder does not exist or is not a directory")
    if annotation not in ANNOTATIONS:
        raise DatasetError(f"--annotation must be one of {', '.join(ANNOTATIONS)}, got {annotation!r}")
    if folds < 2:
        raise DatasetError(f"--folds must be at least 2, got {folds}")
    if not 0 <= test_fold < folds:
        raise DatasetError(f"--test-fold must be in 0..{folds - 1} for --folds {folds}, got {test_fold}")
    folders = sorted(p for p in raw.iterdir() if p.is_dir() and FOLDER_RE.match(p.name))
    if not folders:
        nested = [p for p in sorted(raw.iterdir()) if p.is_dir()
                  and any(FOLDER_RE.match(q.name) for q in p.iterdir() if q.is_dir())]
        hint = f"; did you mean --raw {nested[0]}?" if len(nested) == 1 else ""
        raise DatasetError(f"{raw}: no kosNN folders found; {EXPECTED_LAYOUT}{hint}")

    pairs: dict[str, list[tuple[Path, Path]]] = {}
    for folder in folders:
        found = _scan_folder(folder)
        if found:
            pairs[folder.name] = found
        else:
            print(f"note: {folder}: no PartK.jpg images, skipped", file=sys.stderr)
    if len(pairs) < folds:
        raise DatasetError(f"{raw}: {len(pairs)} kosNN folders with images, fewer than --folds {folds}")
    # Which folders hold a defect decides the folds, so the masks are read here once.
    with_defect = {group: any(mask_has_defect(mask) for _, mask in items) for group, items in pairs.items()}
    fold_of = assign_folds(with_defect, folds, seed)

    samples = [
        RawSample(
            id=f"{group}/{image.stem}", image=image, group=group,
            split="test" if fold_of[group] == test_fold else "train",
            mask=mask, declared_defective=None, fold=fold_of[group],
        )
        for group, items in pairs.items()
        for image, mask in items
    ]
    return ParsedDataset(
        name=NAME,
        source={
            "dataset": "KolektorSDD", "url": URL, "annotation": annotation,
            "options": {"annotation": annotation, "folds": folds, "test_fold": test_fold},
        },
        license=LICENSE,
        samples=samples,
        group_is_unit=True,
    )
