"""KolektorSDD2 (2021) raw layout -> ParsedDataset.

    train/NNNNN.png + train/NNNNN_GT.png     (ids from 10000)
    test/NNNNN.png  + test/NNNNN_GT.png      (ids 20000-21003)

Official split = the folder. Anything not named NNNNN.png / NNNNN_GT.png is left out, notably the
archive's byte-identical duplicates `train/10301 (copy).png` and `train/10301_GT (copy).png`.

Group: every sample is in the one group "ksdd2". The images are independent surface patches with
no published object or batch structure, and the split folder is already the split, so a
per-folder group would only repeat it (and read wrongly for images carved into val). With one
group, val carving is stratified by label alone.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from datatools.errors import DatasetError
from datatools.records import ParsedDataset, RawSample

NAME = "kolektorsdd2"
URL = "https://www.vicos.si/resources/kolektorsdd2/"
LICENSE = "CC BY-NC-SA 4.0 (KolektorSDD2: Bozic, Tabernik, Skocaj 2021; Kolektor Group d.o.o. / ViCoS)"
GROUP = "ksdd2"
IMAGE_RE = re.compile(r"^(\d+)\.png$")
MASK_RE = re.compile(r"^(\d+)_GT\.png$")
SPLIT_FOLDERS = ("train", "test")
EXPECTED_LAYOUT = "expected the KolektorSDD2 top folder holding train/ and test/ with NNNNN.png + NNNNN_GT.png"


def _scan(folder: Path, split: str) -> tuple[list[RawSample], list[str]]:
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    ignored: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and (m := IMAGE_RE.match(entry.name)):
            images[m.group(1)] = entry
        elif entry.is_file() and (m := MASK_RE.match(entry.name)):
            masks[m.group(1)] = entry
        else:
            ignored.append(f"{folder.name}/{entry.name}")
    samples = []
    for ident in sorted(images):
        mask = masks.pop(ident, None)
        if mask is None:
            raise DatasetError(f"{folder / f'{ident}_GT.png'}: mask of {images[ident].name} is missing")
        samples.append(RawSample(id=f"{split}/{ident}", image=images[ident], group=GROUP, split=split,
                                 mask=mask, declared_defective=None))
    if masks:
        first = min(masks)
        raise DatasetError(f"{masks[first]}: mask without its image {first}.png")
    return samples, ignored


def parse_kolektorsdd2(raw: Path) -> ParsedDataset:
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetError(f"{raw}: raw dataset folder does not exist or is not a directory")
    present = {p.name: p for p in raw.iterdir() if p.is_dir()}
    missing = [s for s in SPLIT_FOLDERS if s not in present]
    if missing:
        nested = [p for p in present.values() if all((p / s).is_dir() for s in SPLIT_FOLDERS)]
        hint = f"; did you mean --raw {nested[0]}?" if len(nested) == 1 else ""
        raise DatasetError(f"{raw / missing[0]}: folder is missing; {EXPECTED_LAYOUT}{hint}")
    samples: list[RawSample] = []
    ignored: list[str] = []
    for split in SPLIT_FOLDERS:
        found, skipped = _scan(present[split], split)
        samples += found
        ignored += skipped
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        print(f"note: left out {len(ignored)} files not named NNNNN.png / NNNNN_GT.png: {shown}", file=sys.stderr)
    return ParsedDataset(
        name=NAME,
        source={"dataset": "KolektorSDD2", "url": URL, "options": {}},
        license=LICENSE,
        samples=samples,
        group_is_unit=False,
    )
