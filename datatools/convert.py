"""The shared conversion pipeline: parsed raw samples -> one versioned dataset directory.

Steps: decode and check every image and mask in parallel (copying image bytes unchanged, so
pixels stay exact), encode masks as COCO RLE, assign splits, hash everything into the version,
write under a temporary name and rename into place, then move `latest`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import datatools
from datatools.errors import DatasetError
from datatools.imageio import (
    decode_image_bytes,
    image_channels,
    rasterise_ellipse,
    read_mask_file,
)
from datatools.masks import encode_mask
from datatools.records import SPLITS, ParsedDataset, RawSample
from datatools.splits import carve
from datatools.store import LATEST, new_staging_dir, point_link, remove_stale_staging


def default_workers() -> int:
    """Both cores of a 2-core machine; never more processes than CPUs we may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def image_relpath(sample: RawSample) -> str:
    """Where a sample's image goes inside the version directory (original extension kept)."""
    return f"images/{sample.id}{sample.image.suffix}"


def process_sample(job: tuple[RawSample, str]) -> dict:
    """Check one sample and copy its image into the staging directory. Runs in a worker."""
    sample, staging = job
    try:
        data = sample.image.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{sample.image}: image cannot be read ({exc.strerror or exc})") from None
    img = decode_image_bytes(data, sample.image)
    width, height = img.size
    if width == 0 or height == 0:
        raise DatasetError(f"{sample.image}: image is empty ({width}x{height})")
    if not sample.mask_labelled:
        if sample.declared_defective is not True or sample.mask is not None or sample.ellipse is not None:
            raise DatasetError(f"{sample.image}: an image-level label (no mask) must be defective and have no mask")
        mask = np.zeros((height, width), dtype=np.uint8)
    elif sample.mask is not None:
        mask = read_mask_file(sample.mask, (height, width))
    elif sample.ellipse is not None:
        mask = rasterise_ellipse(sample.ellipse, (height, width))
    else:
        mask = np.zeros((height, width), dtype=np.uint8)
    defective = bool(mask.any()) or not sample.mask_labelled
    if sample.declared_defective is not None and sample.declared_defective != defective:
        where = sample.mask or sample.image
        if sample.declared_defective:
            raise DatasetError(f"{where}: labelled defective but its mask has no defect pixel")
        raise DatasetError(f"{where}: labelled OK but its mask marks defect pixels")
    rel = image_relpath(sample)
    dest = Path(staging) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    record = {
        "id": sample.id,
        "image": rel,
        "split": sample.split,
        "group": sample.group,
        "defective": defective,
        "height": height,
        "width": width,
        "channels": image_channels(img),
        "mask": encode_mask(mask),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if sample.fold is not None:
        record["fold"] = sample.fold
    if not sample.mask_labelled:  # written only when false: datasets without such images keep their versions
        record["mask_labelled"] = False
    return record


def _check_samples(parsed: ParsedDataset, raw: Path | None) -> None:
    if not parsed.samples:
        raise DatasetError(f"{raw}: no images found: check --raw points at the dataset's top folder")
    seen: set[str] = set()
    for sample in parsed.samples:
        if sample.id in seen:
            raise DatasetError(f"{sample.image}: duplicate sample id {sample.id!r}")
        seen.add(sample.id)
        if sample.split not in (None, *SPLITS):
            raise DatasetError(f"{sample.image}: unknown split {sample.split!r}")


def assign_splits(records: list[dict], parsed: ParsedDataset, val_fraction: float, seed: int) -> None:
    """Fill in missing splits (test carved first when asked), then carve val from train."""
    unsplit = [r for r in records if r["split"] is None]
    if unsplit:
        test_ids = carve(unsplit, parsed.test_fraction, seed, parsed.group_is_unit, salt="test")
        for r in unsplit:
            r["split"] = "test" if r["id"] in test_ids else "train"
    train = [r for r in records if r["split"] == "train"]
    val_ids = carve(train, val_fraction, seed, parsed.group_is_unit, salt="val")
    for r in train:
        if r["id"] in val_ids:
            r["split"] = "val"


def split_counts(records: list[dict]) -> dict:
    counts = {s: {"images": 0, "defective": 0} for s in SPLITS}
    for r in records:
        counts[r["split"]]["images"] += 1
        counts[r["split"]]["defective"] += int(r["defective"])
    return counts


def content_version(document: dict) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of everything but the version.

    Samples carry the SHA-256 of their image bytes, so this hashes samples and image content.
    """
    payload = {k: v for k, v in document.items() if k != "version"}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:12]


def _prepare_name_dir(out: Path, name: str) -> Path:
    name_dir = Path(out) / name
    try:
        name_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"{out}: output root cannot be created ({exc.strerror or exc})") from None
    if not os.access(name_dir, os.W_OK | os.X_OK):
        raise DatasetError(f"{name_dir}: output directory is not writable")
    remove_stale_staging(name_dir)
    return name_dir


def write_dataset(
    parsed: ParsedDataset,
    out: Path,
    *,
    raw: Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Convert `parsed` into OUT/NAME/VERSION and return that directory.

    Nothing is left behind on failure: the version is staged in OUT/NAME/.tmp-PID-..., locked
    while this run lives, and renamed into place only when complete; a killed run's folder is
    removed by the next conversion. Converting the same input twice gives the same version.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    _check_samples(parsed, raw)
    name_dir = _prepare_name_dir(out, parsed.name)
    staging, lock_fd = new_staging_dir(name_dir)
    try:
        workers = workers or default_workers()
        jobs = [(s, str(staging)) for s in parsed.samples]
        bar = tqdm(
            total=len(jobs), desc=f"converting {parsed.name}", unit="img", file=sys.stderr,
            disable=(not sys.stderr.isatty()) if progress is None else not progress,
        )
        if workers > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("fork")
            # Workers close their inherited copy of the lock: only this process's life keeps it.
            with ctx.Pool(workers, initializer=os.close, initargs=(lock_fd,)) as pool:
                records = []
                for record in pool.imap(process_sample, jobs, chunksize=16):
                    records.append(record)
                    bar.update()
        else:
            records = []
            for job in jobs:
                records.append(process_sample(job))
                bar.update()
        bar.close()

        records.sort(key=lambda r: r["id"])
        assign_splits(records, parsed, val_fraction, seed)
        source = dict(parsed.source)
        source["converter"] = source.get("converter", parsed.name)
        source["converter_version"] = datatools.__version__
        options = dict(source.get("options", {}))
        options.update({"val_fraction": val_fraction, "seed": seed})
        source["options"] = dict(sorted(options.items()))
        document = {
            "schema": datatools.SCHEMA_ID,
            "name": parsed.name,
            "version": "",
            "source": source,
            "license": parsed.license,
            "splits": split_counts(records),
            "samples": records,
        }
        version = content_version(document)
        document["version"] = version
        (staging / "dataset.json").write_text(json.dumps(document, indent=1) + "\n")

        final = name_dir / version
        if final.exists():
            shutil.rmtree(staging)  # identical content is already there
        else:
            os.rename(staging, final)
        point_link(name_dir / LATEST, version)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock_fd)
