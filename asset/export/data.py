"""Dataset images for verification, calibration and benchmarks, and numpy scoring (no torch here).

The dataset is the one the model was trained on (model.json "dataset.path"), or another version directory given
explicitly (`--data`). Scoring is numpy-only so every backend is measured by the same code, with or without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asset.algorithm import Algorithm, Prediction, load_image, load_mask  # noqa: F401 (re-exported as D.load_image)
from asset.modeldir import ModelDirError


@dataclass
class Item:
    id: str
    path: Path
    defective: bool
    rle: dict
    height: int
    width: int


def open_model_dataset(card: dict, data: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """(version dir, dataset.json) of `data`, else of the dataset recorded in the card. Clear error when absent."""
    from datatools.errors import DatasetError
    from datatools.validate import load_dataset

    path = data or (card.get("dataset") or {}).get("path")
    if not path:
        raise ModelDirError("the model card records no dataset: pass --data DATASET_DIR (a dataset version directory)")
    try:
        return load_dataset(Path(path))
    except DatasetError as exc:
        how = "" if data else " (the dataset recorded in model.json; pass --data to use a copy elsewhere)"
        raise ModelDirError(f"cannot read the dataset {path}{how}: {exc}") from None


def split_items(card: dict, split: str, data=None, limit: int | None = None) -> list[Item]:
    """Samples of one split (falls back to none: the caller decides). `limit` keeps the first N, balanced by
    alternating defective / good images so small verification sets see both classes."""
    version_dir, doc = open_model_dataset(card, data)
    items = [Item(s["id"], version_dir / s["image"], bool(s["defective"]), s["mask"], int(s["height"]),
                  int(s["width"])) for s in doc["samples"] if s["split"] == split]
    if limit is not None and len(items) > limit:
        bad = [i for i in items if i.defective]
        good = [i for i in items if not i.defective]
        mixed = [x for pair in zip(bad, good) for x in pair] + bad[len(good):] + good[len(bad):]
        items = mixed[:limit]
    return items


def first_split(card: dict, data=None, prefer: tuple[str, ...] = ("val", "test", "train"), limit=None
                ) -> tuple[str, list[Item]]:
    for split in prefer:
        items = split_items(card, split, data, limit)
        if items:
            return split, items
    raise ModelDirError(f"the dataset has no images in {', '.join(prefer)}")


def batches(algorithm: Algorithm, images: list[np.ndarray], batch_size: int):
    """(indices, preprocessed batch, metas) over images grouped by the network size they reach."""
    policy = algorithm.size_policy
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        shape = policy.network_shape(*img.shape[:2]) if policy.mode == "pad" else policy.size
        groups.setdefault(tuple(shape), []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            x, metas = algorithm.preprocess([images[i] for i in part])
            yield part, x, metas


def run_logits(infer, algorithm: Algorithm, images: list[np.ndarray], batch_size: int = 8
               ) -> tuple[list[np.ndarray], list]:
    """Per-image logits (1 x H x W, network frame) and metas through `infer` (NCHW -> N1HW)."""
    logits: list = [None] * len(images)
    metas: list = [None] * len(images)
    for part, x, ms in batches(algorithm, images, batch_size):
        out = infer(x)
        for k, i in enumerate(part):
            logits[i], metas[i] = out[k], ms[k]
    return logits, metas


def postprocess_each(algorithm: Algorithm, logits, metas, image_threshold=None) -> list[Prediction]:
    return [algorithm.postprocess(lg[None], [m], image_threshold=image_threshold)[0] for lg, m in zip(logits, metas)]


def score(preds: list[Prediction], items: list[Item], masks: list[np.ndarray] | None = None) -> dict:
    """Image accuracy (decision vs ground truth) and dataset-level pixel IoU, numpy only."""
    inter = union = correct = 0
    for k, (p, it) in enumerate(zip(preds, items)):
        gt = (masks[k] if masks is not None else load_mask(it.rle)).astype(bool)
        pm = p.mask.astype(bool)
        inter += int((pm & gt).sum())
        union += int((pm | gt).sum())
        correct += int(p.defective == it.defective)
    return {"images": len(items), "accuracy": correct / len(items) if items else None,
            "pixel_iou": inter / union if union else 1.0}


def agreement(a: list[Prediction], b: list[Prediction]) -> dict:
    """How two backends' predictions agree: decisions, and mask pixels (fraction equal over all images)."""
    same = sum(int(x.defective == y.defective) for x, y in zip(a, b))
    pixels = sum(x.mask.size for x in a)
    equal = sum(int((x.mask == y.mask).sum()) for x, y in zip(a, b))
    return {"decisions_equal": same, "images": len(a), "mask_agreement": equal / pixels if pixels else 1.0}
