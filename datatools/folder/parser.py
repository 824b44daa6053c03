"""Your own images in two class folders -> ParsedDataset.

    RAW/
      good/        OK images (any depth of subfolders; .png .bmp .jpg .jpeg .tif .tiff)
      defective/   defective images
      masks/       optional (--masks DIR): one mask per image, PNG or BMP, any non-zero pixel = defect,
                   named like the image plus --mask-suffix (e.g. part7.jpg -> part7_mask.png), either
                   at the image's path relative to its class folder, under a class subfolder
                   (masks/defective/part7_mask.png), or flat by file name

A defective image without a mask is kept as an image-level label (FORMAT.md `mask_labelled`), never
dropped. A good image may have a mask; it must be empty. There is no official split: test and then
val are carved, stratified by label, or by whole groups when `--group-regex` says which images show
the same physical part (the part never straddles train, val and test).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from datatools.errors import DatasetError
from datatools.records import ParsedDataset, RawSample

NAME = "folder"
IMAGE_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_EXTS = (".png", ".bmp")
LOSSY_EXTS = (".jpg", ".jpeg")
CLASSES = ("good", "defective")
EXPECTED_LAYOUT = ("expected RAW/good/ and RAW/defective/ holding images (or name the two folders with --good and "
                   "--defective), masks optional in --masks DIR")
DEFAULT_LICENSE = "unspecified (the user's own images)"


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _resolve(raw: Path, folder: str | Path) -> Path:
    folder = Path(folder)
    return folder if folder.is_absolute() else raw / folder


def _recorded(folder: str | Path | None) -> str | None:
    """An option path as the dataset records it: as given when relative, the last name when absolute (a
    machine's paths must not change the version)."""
    if folder is None:
        return None
    folder = Path(folder)
    return folder.name if folder.is_absolute() else folder.as_posix()


def _scan(folder: Path, skip: Path | None, exts: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """(files with one of `exts`, other files) under folder, recursively, sorted; hidden files and `skip` left out."""
    found, other = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if _hidden(rel) or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        (found if path.suffix.lower() in exts else other).append(path)
    return found, other


def _index_masks(masks: Path) -> dict[str, Path]:
    """Mask files by their path relative to `masks`, without extension (posix)."""
    files, other = _scan(masks, None, MASK_EXTS)
    lossy = [p for p in other if p.suffix.lower() in LOSSY_EXTS]
    if lossy:
        raise DatasetError(f"{lossy[0]}: a JPEG mask; JPEG is lossy and blurs mask edges into false defect pixels: "
                           "save masks as PNG or BMP")
    if other:
        print(f"note: {masks}: {len(other)} file(s) that are not PNG/BMP masks ignored (e.g. {other[0].name})",
              file=sys.stderr)
    index: dict[str, Path] = {}
    for path in files:
        key = path.relative_to(masks).with_suffix("").as_posix()
        if key in index:
            raise DatasetError(f"{path}: two masks for one image: {index[key].name} and {path.name}")
        index[key] = path
    return index


def _group_of(pattern: re.Pattern, rel: str, image: Path) -> str:
    m = pattern.search(rel)
    if m is None:
        raise DatasetError(f"{image}: --group-regex {pattern.pattern!r} does not match {rel!r} (the image's path in "
                           "its class folder); every image needs a group")
    if "group" in pattern.groupindex:
        group = m.group("group")
    elif pattern.groups:
        group = m.group(1)
    else:
        group = m.group(0)
    if not group:
        raise DatasetError(f"{image}: --group-regex {pattern.pattern!r} gives an empty group for {rel!r}")
    return group


def parse_folder(raw: Path, *, good: str | Path = "good", defective: str | Path = "defective",
                 masks: str | Path | None = None, mask_suffix: str = "", group_regex: str | None = None,
                 test_fraction: float = 0.2, license: str = DEFAULT_LICENSE) -> ParsedDataset:
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetError(f"{raw}: raw folder does not exist or is not a directory")
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if not license.strip():
        raise DatasetError("--license must not be empty")
    pattern = None
    if group_regex is not None:
        try:
            pattern = re.compile(group_regex)
        except re.error as exc:
            raise DatasetError(f"--group-regex {group_regex!r} is not a valid regular expression ({exc})") from None

    mask_dir = None
    if masks is not None:
        mask_dir = _resolve(raw, masks)
        if not mask_dir.is_dir():
            raise DatasetError(f"{mask_dir}: mask folder (--masks) does not exist or is not a directory")
    folders = {"good": _resolve(raw, good), "defective": _resolve(raw, defective)}
    for label, folder in folders.items():
        if not folder.is_dir():
            raise DatasetError(f"{folder}: the {label} folder does not exist or is not a directory; {EXPECTED_LAYOUT}")
    if folders["good"].resolve() == folders["defective"].resolve():
        raise DatasetError(f"{folders['good']}: --good and --defective name the same folder")

    index = _index_masks(mask_dir) if mask_dir is not None else {}
    claimed: dict[str, Path] = {}  # mask key -> the image that took it
    skip = mask_dir.resolve() if mask_dir is not None else None
    samples: list[RawSample] = []
    counts = {"good": 0, "masked": 0, "image_level": 0}
    for label, folder in folders.items():
        images, other = _scan(folder, skip, IMAGE_EXTS)
        if other:
            print(f"note: {folder}: {len(other)} file(s) that are not images ignored (e.g. {other[0].name})",
                  file=sys.stderr)
        if not images:
            raise DatasetError(f"{folder}: the {label} folder holds no images ({' '.join(IMAGE_EXTS)}); "
                               f"{EXPECTED_LAYOUT}")
        for image in images:
            rel = image.relative_to(folder)
            stem = rel.with_suffix("").as_posix()
            candidates = [f"{folder.name}/{stem}{mask_suffix}", f"{label}/{stem}{mask_suffix}",
                          f"{stem}{mask_suffix}", f"{rel.stem}{mask_suffix}"]
            key = next((k for k in candidates if k in index), None)
            if key is not None and key in claimed:
                raise DatasetError(f"{index[key]}: this mask matches two images, {claimed[key]} and {image}; put the "
                                   "masks in class subfolders (MASKS/good/, MASKS/defective/) or mirror the image paths")
            mask = None
            if key is not None:
                claimed[key] = image
                mask = index[key]
            group = _group_of(pattern, rel.as_posix(), image) if pattern is not None else None
            if label == "good":
                counts["good"] += 1
                samples.append(RawSample(id=f"good/{stem}", image=image, group=group or "good", mask=mask,
                                         declared_defective=False))
            elif mask is not None:
                counts["masked"] += 1
                samples.append(RawSample(id=f"defective/{stem}", image=image, group=group or "defective", mask=mask,
                                         declared_defective=True))
            else:
                counts["image_level"] += 1
                samples.append(RawSample(id=f"defective/{stem}", image=image, group=group or "defective-no-mask",
                                         declared_defective=True, mask_labelled=False))
    orphans = sorted(set(index) - set(claimed))
    if orphans:
        hint = f" (masks are named like the image plus --mask-suffix {mask_suffix!r})"
        raise DatasetError(f"{index[orphans[0]]}: mask without an image: no image in {folders['good']} or "
                           f"{folders['defective']} matches it{hint}"
                           + (f"; {len(orphans) - 1} more such mask(s)" if len(orphans) > 1 else ""))
    print(f"folder: {counts['good']} good, {counts['masked'] + counts['image_level']} defective "
          f"({counts['masked']} with a mask, {counts['image_level']} image-level: no mask)"
          + (f", {len({s.group for s in samples})} groups" if pattern is not None else ""), file=sys.stderr)
    options = {"good": _recorded(good), "defective": _recorded(defective), "masks": _recorded(masks),
               "mask_suffix": mask_suffix, "group_regex": group_regex, "test_fraction": test_fraction}
    return ParsedDataset(
        name=NAME,
        source={"dataset": "own images (good/ and defective/ folders)", "options": options},
        license=license,
        samples=samples,
        group_is_unit=pattern is not None,
        test_fraction=test_fraction,
    )
