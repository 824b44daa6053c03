"""`datatool validate`: is a dataset directory exactly what its dataset.json says?"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import resources
from pathlib import Path

import jsonschema
from tqdm import tqdm

from datatools.convert import split_counts
from datatools.errors import DatasetError
from datatools.imageio import decode_image_bytes
from datatools.masks import decode_mask
from datatools.store import resolve_version_dir


def load_schema() -> dict:
    return json.loads(resources.files("datatools").joinpath("schema/dataset.schema.json").read_text())


def load_dataset(path: Path) -> tuple[Path, dict]:
    """Read and schema-check dataset.json; returns (version dir, document)."""
    version_dir = resolve_version_dir(path)
    index = version_dir / "dataset.json"
    try:
        document = json.loads(index.read_text())
    except ValueError as exc:
        raise DatasetError(f"{index}: not valid JSON ({exc})") from None
    errors = sorted(jsonschema.Draft202012Validator(load_schema()).iter_errors(document), key=str)
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise DatasetError(f"{index}: schema error at {where}: {first.message}")
    return version_dir, document


def validate_dataset(path: Path, check_hashes: bool = True, progress: bool | None = None) -> list[str]:
    """Return a list of problems (empty when the dataset is valid)."""
    version_dir, document = load_dataset(path)
    problems: list[str] = []
    ids: set[str] = set()
    if version_dir.name != document["version"]:
        problems.append(f"directory name {version_dir.name} differs from version {document['version']}")
    if split_counts(document["samples"]) != document["splits"]:
        problems.append("per-split counts in 'splits' do not match the samples")
    samples = document["samples"]
    bar = tqdm(samples, desc="validating", unit="img", file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    for s in bar:
        sid = s["id"]
        if sid in ids:
            problems.append(f"{sid}: duplicate id")
        ids.add(sid)
        image_path = version_dir / s["image"]
        try:
            data = image_path.read_bytes()
        except OSError:
            problems.append(f"{sid}: image {s['image']} is missing")
            continue
        if check_hashes and "sha256" in s and hashlib.sha256(data).hexdigest() != s["sha256"]:
            problems.append(f"{sid}: image {s['image']} does not match its sha256")
        try:
            img = decode_image_bytes(data, image_path)
        except DatasetError as exc:
            problems.append(f"{sid}: {exc}")
            continue
        if img.size != (s["width"], s["height"]):
            problems.append(
                f"{sid}: image is {img.size[0]}x{img.size[1]} but dataset.json says {s['width']}x{s['height']}"
            )
        if list(s["mask"]["size"]) != [s["height"], s["width"]]:
            problems.append(f"{sid}: mask size {s['mask']['size']} differs from image {s['height']}x{s['width']}")
            continue
        try:
            mask = decode_mask(s["mask"])
        except Exception as exc:  # pycocotools raises plain errors on corrupt counts
            problems.append(f"{sid}: mask does not decode ({exc})")
            continue
        if mask.shape != (s["height"], s["width"]):
            problems.append(f"{sid}: mask decodes to {mask.shape}, expected {(s['height'], s['width'])}")
        if not s.get("mask_labelled", True):  # image-level label: defective, stored mask all zero
            if mask.any():
                problems.append(f"{sid}: mask_labelled is false but its stored mask marks defect pixels")
        elif bool(mask.any()) != s["defective"]:
            problems.append(f"{sid}: defective={s['defective']} disagrees with its mask")
    return problems
