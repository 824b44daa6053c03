"""Reading standard-format datasets (dataset.json) for training and evaluation.

The DataModule knows nothing about which datatool made a dataset: it reads dataset.json through
`datatools.validate.load_dataset`, decodes images (grayscale or RGB) and COCO-RLE masks, and turns
them into network tensors with the model's `Algorithm` (the same preprocessing as every backend).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from asset.algorithm import Algorithm, Meta, load_image, load_mask
from asset.errors import AssetError
from asset.scoring import Item, dataset_items

# The splits data.mask_fraction thins: what training sees (test keeps every mask, for the pixel figures).
MASK_FRACTION_SPLITS = ("train", "val")
# Decode a whole split into memory when it holds fewer pixels than this (then workers are not needed).
CACHE_PIXELS = 512 * 1024 * 1024


class DataError(AssetError, ValueError):
    """A dataset directory that cannot be used (missing, invalid, empty split); says how to fix it."""


def open_dataset(path: str | os.PathLike, check: bool = False) -> tuple[Path, dict]:
    """(version dir, dataset.json) after schema checks; with check=True also the full validation
    (files present, hashes, masks). Raises DataError with the datatools message."""
    from datatools.errors import DatasetError
    from datatools.validate import load_dataset, validate_dataset

    try:
        version_dir, doc = load_dataset(Path(path))
        if check:
            problems = validate_dataset(version_dir, check_hashes=True, progress=False)
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                raise DataError(
                    f"{path}: dataset fails validation: {'; '.join(problems[:3])}{more}. "
                    f"Run `datatool validate {path}` for the full list and re-convert the dataset"
                )
    except DatasetError as exc:
        raise DataError(f"{exc} (give --data a dataset version directory ROOT/NAME/VERSION made by `datatool convert`)") \
            from None
    return version_dir, doc


def keep_masks(samples: list[Item], fraction: float, seed: int, split: str) -> list[Item]:
    """`samples` with only round(fraction x n) of the n masks of their defective images kept (seeded by `seed` and
    `split`; the same ids always keep the same masks); the others become image-level labels (masked=False). OK
    images keep their (empty) masks: an OK image is fully labelled. fraction 1 changes nothing."""
    import dataclasses
    import hashlib
    import random

    fraction = float(fraction)
    if fraction >= 1.0:
        return list(samples)
    ids = sorted(s.id for s in samples if s.defective and s.masked)
    digest = hashlib.sha256(f"{int(seed)}:mask_fraction:{split}".encode()).digest()
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(ids)
    dropped = set(ids[round(fraction * len(ids)):])
    return [dataclasses.replace(s, masked=False) if s.id in dropped else s for s in samples]


def mask_counts(samples: list[Item]) -> dict:
    """What a split holds for training: images, OK ones, defective ones with a mask and without (image-level)."""
    return {"images": len(samples), "ok": sum(not s.defective for s in samples),
            "defective_masked": sum(s.defective and s.masked for s in samples),
            "defective_image_level": sum(s.defective and not s.masked for s in samples)}


def dataset_channels(doc: dict) -> int:
    """3 when any image is colour, else 1."""
    return 3 if any(int(s["channels"]) == 3 for s in doc["samples"]) else 1


def dataset_shape(doc: dict) -> tuple[int, int] | None:
    """The common (H, W) of all images, or None when sizes vary."""
    shapes = {(int(s["height"]), int(s["width"])) for s in doc["samples"]}
    return shapes.pop() if len(shapes) == 1 else None


def max_shape(doc: dict) -> tuple[int, int]:
    return max(int(s["height"]) for s in doc["samples"]), max(int(s["width"]) for s in doc["samples"])


def default_workers(cached: bool) -> int:
    """0 when the split is decoded in memory (nothing left to parallelise); else one worker per spare core."""
    if cached:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


class SegmentationDataset(Dataset):
    """(image tensor C x H x W float32, mask tensor 1 x H x W float32, index, image label float32 (1 = defective),
    has-mask bool) in the network frame. The label is the sample's, not derived from the mask: an image-level
    label (has-mask False) is defective with an all-zero mask, which the pixel loss must not see."""

    def __init__(self, samples: list[Item], algorithm: Algorithm, augment: dict | None = None, seed: int = 0,
                 cache: bool = True) -> None:
        self.samples = samples
        self.algorithm = algorithm
        self.augment = {k: bool(v) for k, v in (augment or {}).items()}
        self.seed = int(seed)
        self.epoch = 0
        self._cache: list | None = None
        if cache:
            self._cache = [self._load(i) for i in range(len(samples))]

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.samples[i]
        x, metas = self.algorithm.preprocess([load_image(s.path)])
        m = self.algorithm.preprocess_mask(load_mask(s.rle), metas[0])
        return x[0], m

    def __getitem__(self, i: int):
        x, m = self._cache[i] if self._cache is not None else self._load(i)
        if any(self.augment.values()):
            # One generator per (seed, epoch, index): the same augmentations whatever the worker count or resume.
            rng = np.random.default_rng((self.seed, self.epoch, i))
            flips = rng.random(3)
            if self.augment.get("hflip") and flips[0] < 0.5:
                x, m = x[:, :, ::-1], m[:, ::-1]
            if self.augment.get("vflip") and flips[1] < 0.5:
                x, m = x[:, ::-1, :], m[::-1, :]
            if self.augment.get("rot90") and x.shape[1] == x.shape[2] and flips[2] < 0.5:
                k = int(rng.integers(1, 4))
                x, m = np.rot90(x, k, axes=(1, 2)), np.rot90(m, k)
        s = self.samples[i]
        return (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(m))[None].float(),
                i, torch.tensor(float(s.defective)), torch.tensor(bool(s.masked)))


def _lightning():
    import lightning as L

    return L


class DefectDataModule(_lightning().LightningDataModule):
    """Train/val/test loaders over one dataset version, preprocessed by `algorithm`."""

    def __init__(self, data_dir: str | os.PathLike, algorithm: Algorithm, batch_size: int = 8,
                 num_workers: int | str = "auto", augment: dict | None = None, seed: int = 0,
                 eval_batch_size: int | None = None, oversample: float | None = None,
                 mask_fraction: float = 1.0) -> None:
        """`mask_fraction` < 1: only that share of the defective images' masks of train and val is used (seeded by
        `seed`; `keep_masks`), the others train as image-level labels, as if they had never been drawn."""
        super().__init__()
        self.version_dir, self.doc = open_dataset(data_dir)
        self.algorithm = algorithm
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = num_workers
        self.augment = augment or {}
        self.seed = int(seed)
        self.oversample = None if oversample is None else float(oversample)
        self.mask_fraction = float(mask_fraction)
        self.datasets: dict[str, SegmentationDataset] = {}

    def samples(self, split: str) -> list[Item]:
        samples = dataset_items(self.version_dir, self.doc, split)
        if split in MASK_FRACTION_SPLITS:
            samples = keep_masks(samples, self.mask_fraction, self.seed, split)
        return samples

    def _dataset(self, split: str) -> SegmentationDataset:
        if split not in self.datasets:
            samples = self.samples(split)
            if not samples:
                raise DataError(f"{self.version_dir}: the {split!r} split is empty (re-convert with --val-fraction > 0 "
                                "for a validation split)")
            pixels = sum(s.height * s.width for s in samples)
            self.datasets[split] = SegmentationDataset(
                samples, self.algorithm, self.augment if split == "train" else None, self.seed,
                cache=pixels < CACHE_PIXELS,
            )
        return self.datasets[split]

    def set_epoch(self, epoch: int) -> None:
        for ds in self.datasets.values():
            ds.set_epoch(epoch)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._dataset("train")
            self._dataset("val")
        if stage in (None, "test"):
            self._dataset("test")

    def _workers(self, ds: SegmentationDataset) -> int:
        if self.num_workers in (None, "auto"):
            return default_workers(ds._cache is not None)
        return int(self.num_workers)

    def _loader(self, split: str, shuffle: bool, batch_size: int, sampler=None) -> DataLoader:
        ds = self._dataset(split)
        workers = self._workers(ds)
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          num_workers=workers, generator=None if sampler is not None else gen,
                          persistent_workers=False, drop_last=False)

    def train_sampler(self) -> WeightedRandomSampler | None:
        """With `oversample` = p: defective images make up p of the images drawn (with replacement), one epoch
        still being len(train) images. Why: with 10% defective images and thin defects, plain shuffling gives
        batches with no defect pixel at all and the network learns to predict nothing."""
        if self.oversample is None:
            return None
        flags = np.array([s.defective for s in self._dataset("train").samples])
        n_def = int(flags.sum())
        if n_def == 0 or n_def == len(flags):
            return None  # nothing to rebalance
        weights = np.where(flags, self.oversample / n_def, (1.0 - self.oversample) / (len(flags) - n_def))
        gen = torch.Generator().manual_seed(self.seed)
        return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(flags),
                                     replacement=True, generator=gen)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size, sampler=self.train_sampler())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)


def iterate_images(samples: list[Item]):
    """(sample, image uint8, mask uint8) at the original size, for evaluation."""
    for s in samples:
        yield s, load_image(s.path), load_mask(s.rle)


__all__ = ["DataError", "DefectDataModule", "Meta", "SegmentationDataset", "Item", "keep_masks", "mask_counts",
           "open_dataset"]
