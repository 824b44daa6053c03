"""Dataset images for verification, calibration, evaluation and benchmarks (no torch here).

The dataset is the one the model was trained on (model.json "dataset.path"), or another version directory given
explicitly (`--data`). Predictions are batched and scored by `asset.scoring`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asset import scoring
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


# The names below are kept for callers not yet switched to asset.scoring (the one place predictions are
# batched and scored); they delegate to it.
def batches(algorithm: Algorithm, images: list[np.ndarray], batch_size: int):
    """asset.scoring.network_batches."""
    return scoring.network_batches(algorithm, images, batch_size)


def run_logits(infer, algorithm: Algorithm, images: list[np.ndarray], batch_size: int = scoring.DEFAULT_BATCH
               ) -> tuple[list[np.ndarray], list]:
    """asset.scoring.run_logits."""
    return scoring.run_logits(infer, algorithm, images, batch_size)


def postprocess_each(algorithm: Algorithm, logits, metas, image_threshold=None) -> list[Prediction]:
    """asset.scoring.predictions_from_logits."""
    return scoring.predictions_from_logits(algorithm, logits, metas, image_threshold)


def score(preds: list[Prediction], items: list[Item], masks: list[np.ndarray] | None = None) -> dict:
    """asset.scoring.score over items (their masks decoded when not given)."""
    return scoring.score(preds, [it.defective for it in items],
                         masks if masks is not None else (load_mask(it.rle) for it in items))


agreement = scoring.agreement
