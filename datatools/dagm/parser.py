"""DAGM 2007 raw layouts -> ParsedDataset.

Two public releases exist and are told apart by their folders (see README.md beside this file):

- full release: ClassN/{Train,Test}/NNNN.PNG, ClassN/{Train,Test}/Label/Labels.txt and
  Label/NNNN_label.PNG for the defective images. Official split = the Train/Test folder.
- development release (classes 1-6): ClassN/ (OK images) and ClassN_def/ (defective 1.png..150.png
  plus labels.txt with one ellipse per image). No official split: test is carved by the pipeline.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from datatools.errors import DatasetError
from datatools.records import Ellipse, ParsedDataset, RawSample

NAME = "dagm"
URL = "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection"
LICENSE = (
    "DAGM 2007 competition data (Weimer et al., HCI Heidelberg): free for non-commercial research "
    "only; cite the DAGM 2007 'Weakly Supervised Learning for Industrial Optical Inspection' set"
)
CLASS_RE = re.compile(r"^Class(\d+)$")
CLASS_DEF_RE = re.compile(r"^Class(\d+)_def$")
SPLIT_FOLDERS = (("Train", "train"), ("Test", "test"))
EXPECTED_LAYOUT = (
    "expected the DAGM 2007 top folder: either the full release (Class1/Train/0576.PNG, "
    "Class1/Train/Label/Labels.txt, ..., Class1/Test/...) or the development release "
    "(Class1/ with OK images and Class1_def/ with 1.png..150.png and labels.txt)"
)


def _children(folder: Path) -> dict[str, Path]:
    """Entries of `folder` by lower-case name (so .PNG/.png and Label/label both resolve)."""
    try:
        return {p.name.lower(): p for p in folder.iterdir()}
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None


def _child(folder: Path, name: str, what: str) -> Path:
    found = _children(folder).get(name.lower())
    if found is None:
        raise DatasetError(f"{folder / name}: {what} is missing")
    return found


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: is not a text file") from None


def _find_classes(raw: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    plain: dict[int, Path] = {}
    defect: dict[int, Path] = {}
    for entry in sorted(raw.iterdir()):
        if not entry.is_dir():
            continue
        if m := CLASS_RE.match(entry.name):
            plain[int(m.group(1))] = entry
        elif m := CLASS_DEF_RE.match(entry.name):
            defect[int(m.group(1))] = entry
    return plain, defect


def _wrong_level_hint(raw: Path) -> str:
    """Name a sub-folder that looks like the right top folder, if there is exactly one."""
    try:
        candidates = [
            p for p in sorted(raw.iterdir())
            if p.is_dir() and any(CLASS_RE.match(q.name) for q in p.iterdir() if q.is_dir())
        ]
    except OSError:
        return ""
    return f"; did you mean --raw {candidates[0]}?" if len(candidates) == 1 else ""


def _select(found: dict[int, Path], classes: list[int] | None, raw: Path) -> list[int]:
    if classes is None:
        return sorted(found)
    missing = sorted(set(classes) - set(found))
    if missing:
        names = ", ".join(f"Class{n}" for n in missing)
        have = ", ".join(f"Class{n}" for n in sorted(found)) or "none"
        raise DatasetError(f"{raw}: --classes asks for {names}, not found (present: {have})")
    return sorted(set(classes))


# --------------------------------------------------------------------------- full release

def parse_labels_txt(path: Path) -> list[tuple[int, str, bool, str | None]]:
    """Read one full-release Labels.txt -> [(line number, image name, defective, mask name)].

    Format (checked on all 20 real files): first line `1`, then one tab-separated row per image,
    CRLF line ends. Defective: `0595<TAB>1<TAB>0595.PNG<TAB>0<TAB>0595_label.PNG` (5 fields);
    OK: `0576<TAB>0<TAB>0576.PNG<TAB>0<TAB>0<TAB>` (6 fields, the last one empty).
    """
    lines = _read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip() != "1":
        raise DatasetError(f"{path}: line 1: expected the header line '1', got {lines[0][:40]!r}"
                           if lines else f"{path}: file is empty (expected the header line '1')")
    rows: list[tuple[int, str, bool, str | None]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) == 6 and fields[5] == "":
            fields = fields[:5]  # OK rows end in a tab
        if len(fields) != 5:
            raise DatasetError(f"{path}: line {number}: expected 5 tab-separated fields "
                               f"(id, label, image, 0, mask), got {len(fields)}: {line[:80]!r}")
        ident, label, image, _, mask = (f.strip() for f in fields)
        if not ident.isdigit() or not image:
            raise DatasetError(f"{path}: line {number}: malformed row {line[:80]!r}")
        if label not in ("0", "1"):
            raise DatasetError(f"{path}: line {number}: label must be 0 or 1, got {label!r}")
        defective = label == "1"
        if defective and mask in ("", "0"):
            raise DatasetError(f"{path}: line {number}: label 1 but no mask file named")
        if not defective and mask not in ("", "0"):
            raise DatasetError(f"{path}: line {number}: label 0 but a mask file {mask!r} is named")
        if image.lower() in seen:
            raise DatasetError(f"{path}: line {number}: {image} is listed twice (first on line {seen[image.lower()]})")
        seen[image.lower()] = number
        rows.append((number, image, defective, mask if defective else None))
    return rows


def _parse_full(raw: Path, classes: list[int], found: dict[int, Path]) -> list[RawSample]:
    samples: list[RawSample] = []
    for n in classes:
        class_dir = found[n]
        for folder, split in SPLIT_FOLDERS:
            split_dir = _child(class_dir, folder, f"the {folder} folder of Class{n}")
            label_dir = _child(split_dir, "Label", "the Label folder")
            labels_txt = _child(label_dir, "Labels.txt", "the label list")
            images = {k: p for k, p in _children(split_dir).items() if k.endswith(".png") and p.is_file()}
            masks = _children(label_dir)
            listed: set[str] = set()
            for number, image_name, defective, mask_name in parse_labels_txt(labels_txt):
                image = images.get(image_name.lower())
                if image is None:
                    raise DatasetError(f"{split_dir / image_name}: image listed in {labels_txt} "
                                       f"line {number} does not exist")
                listed.add(image_name.lower())
                mask = None
                if mask_name is not None:
                    mask = masks.get(mask_name.lower())
                    if mask is None or not mask.is_file():
                        raise DatasetError(f"{label_dir / mask_name}: mask listed in {labels_txt} "
                                           f"line {number} does not exist")
                samples.append(RawSample(
                    id=f"Class{n}/{folder}/{image.stem}", image=image, group=f"Class{n}", split=split,
                    mask=mask, declared_defective=defective,
                ))
            # An image the label list does not know has no trustworthy label: refuse it.
            unlisted = sorted(k for k in images if k not in listed)
            if unlisted:
                more = f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""
                raise DatasetError(f"{images[unlisted[0]]}: image is not listed in {labels_txt}{more}")
    return samples


# ---------------------------------------------------------------------- development release

def parse_ellipse_labels(path: Path) -> dict[int, tuple[int, Ellipse]]:
    """Read a development-release ClassN_def/labels.txt -> {index: (line number, Ellipse)}.

    Columns: index, semi-major axis, semi-minor axis, angle (radians), centre x, centre y, separated
    by a tab or a tab and a space (any whitespace is accepted).

    Angle convention: the angle is taken in image coordinates (x to the right, y *down*), the major
    axis pointing along (cos a, sin a). That is how the public readers of this file rasterise it,
    e.g. the DAGM Class1_def loader in the TensorFlow example code found on GitHub (it rotates each
    pixel offset by -a and compares against the semi-axes: x' = dx cos a + dy sin a). It is also
    cv2.ellipse's convention (ellipse2Poly: x = cx + A cos t cos a - B sin t sin a, y = cy + A cos t
    sin a + B sin t cos a), so imageio.rasterise_ellipse passes degrees(a) unchanged, sign kept.
    """
    result: dict[int, tuple[int, Ellipse]] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 6:
            raise DatasetError(f"{path}: line {number}: expected 6 columns (index, semi-major, semi-minor, "
                               f"angle, centre x, centre y), got {len(fields)}: {line[:80]!r}")
        try:
            index = int(fields[0])
            major, minor, angle, cx, cy = (float(f) for f in fields[1:])
        except ValueError:
            raise DatasetError(f"{path}: line {number}: not numbers: {line[:80]!r}") from None
        if index in result:
            raise DatasetError(f"{path}: line {number}: index {index} is listed twice (first on line {result[index][0]})")
        if not all(math.isfinite(v) for v in (major, minor, angle, cx, cy)):
            raise DatasetError(f"{path}: line {number}: every value must be a finite number (inf / nan are not "
                               f"ellipses): {line[:80]!r}")
        if not (major > 0 and minor > 0):
            raise DatasetError(f"{path}: line {number}: semi-axes must be positive, got {major}, {minor}")
        result[index] = (number, Ellipse(cx=cx, cy=cy, semi_major=major, semi_minor=minor, angle=angle))
    return result


def _parse_development(raw: Path, classes: list[int], plain: dict[int, Path], defect: dict[int, Path]) -> list[RawSample]:
    samples: list[RawSample] = []
    for n in classes:
        if n in plain:
            for name, image in sorted(_children(plain[n]).items()):
                if name.endswith(".png") and image.is_file():
                    samples.append(RawSample(id=f"Class{n}/{image.stem}", image=image, group=f"Class{n}",
                                             declared_defective=False))
        if n not in defect:
            continue
        def_dir = defect[n]
        labels_txt = _child(def_dir, "labels.txt", "the ellipse label list")
        ellipses = parse_ellipse_labels(labels_txt)
        images = {k: p for k, p in _children(def_dir).items() if k.endswith(".png") and p.is_file()}
        for index, (number, ellipse) in sorted(ellipses.items()):
            image = images.pop(f"{index}.png", None)
            if image is None:
                raise DatasetError(f"{def_dir / f'{index}.png'}: image listed in {labels_txt} line {number} does not exist")
            samples.append(RawSample(id=f"Class{n}_def/{image.stem}", image=image, group=f"Class{n}",
                                     ellipse=ellipse, declared_defective=True))
        if images:
            first = min(images)
            more = f" and {len(images) - 1} more" if len(images) > 1 else ""
            raise DatasetError(f"{images[first]}: defective image has no row in {labels_txt}{more}")
    return samples


# ------------------------------------------------------------------------------- entry point

def parse_dagm(raw: Path, classes: list[int] | None = None, *, test_fraction: float = 0.5) -> ParsedDataset:
    """Parse a DAGM 2007 download (either release, detected from the folders).

    classes: the class numbers to convert (default: every class present).
    test_fraction: share of each (class, label) stratum carved as test for the development
    release, which has no official split (ignored for the full release).
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetError(f"{raw}: raw dataset folder does not exist or is not a directory")
    plain, defect = _find_classes(raw)
    full = {n: p for n, p in plain.items() if any(k in ("train", "test") for k in _children(p))}
    if full and defect:
        raise DatasetError(f"{raw}: holds both full-release folders ({full[min(full)].name}/Train) and "
                           f"development-release folders ({defect[min(defect)].name}); convert them separately")
    if full:
        if len(full) != len(plain):
            odd = min(set(plain) - set(full))
            raise DatasetError(f"{plain[odd]}: has no Train/Test folders, unlike the other classes; {EXPECTED_LAYOUT}")
        release = "full"
        selected = _select(full, classes, raw)
        samples = _parse_full(raw, selected, full)
    elif defect:
        release = "development"
        if not 0.0 < test_fraction < 1.0:
            raise DatasetError(f"--test-fraction must be in (0, 1) for the development release, got {test_fraction}")
        selected = _select({**plain, **defect}, classes, raw)
        samples = _parse_development(raw, selected, plain, defect)
    elif plain:
        raise DatasetError(f"{plain[min(plain)]}: has no Train/Test folders and there is no "
                           f"{plain[min(plain)].name}_def folder; {EXPECTED_LAYOUT}")
    else:
        raise DatasetError(f"{raw}: no ClassN folders found; {EXPECTED_LAYOUT}{_wrong_level_hint(raw)}")
    options: dict = {"classes": selected}
    if release == "development":
        options["test_fraction"] = test_fraction
    return ParsedDataset(
        name=NAME,
        source={"dataset": "DAGM 2007", "release": release, "url": URL, "options": options},
        license=LICENSE,
        samples=samples,
        group_is_unit=False,
        test_fraction=test_fraction if release == "development" else 0.0,
    )
