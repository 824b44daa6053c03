"""The one way a model's predictions are batched and scored, whatever runs it (numpy only, no torch).

`asset evaluate` (any backend), export verification and `asset benchmark` score through here, so a figure means
the same everywhere; training's validation metrics (asset/training/module.py) are the same definitions computed by
torchmetrics objects on the network-frame masks of each batch (tests/asset/test_scoring.py checks both):

    items = split_items(card, "test", data)                      # the dataset's images of one split
    scores, _ = score_items(backend.infer, algorithm, items)      # read, batched by network shape, scored
    figures = metrics(scores)
    preds = predict_all(backend.infer, algorithm, images)         # or: images in memory ...
    figures = score(preds, [item.defective for item in items], masks)

Definitions (ground truth "defective" = the image's label; masks at the original image size):
- accuracy, precision, recall, confusion matrix: of the image decision (`Prediction.defective`, i.e. defect
  fraction >= image threshold) against the label; precision / recall are 0 when undefined.
- ap, auroc: of the image score (`Prediction.score`) against the label, as torchmetrics' binary_average_precision
  and binary_auroc define them (step-wise AP over every distinct score, trapezoidal ROC area); None unless both
  classes are present. Computed here in numpy because edge images ship no torch (tests/asset/test_scoring.py
  checks they equal torchmetrics').
- pixel_iou: dataset level, sum of intersections / sum of unions over all images (1.0 when both are empty).
- mean_iou_defective: mean of the per-image IoU over images labelled defective (None when there are none).
- Images without a mask (image-level labels, datatools/FORMAT.md `mask_labelled: false`) count in the image
  figures and in none of the pixel ones: their intersection and union are 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asset.algorithm import Algorithm, Prediction, load_image, load_mask
from asset.modeldir import ModelDirError

Infer = Callable[[np.ndarray], np.ndarray]  # float32 N x C x H x W -> float32 N x 1 x H x W logits
DEFAULT_BATCH = 8


# ----------------------------------------------------------------------------- the images scored
@dataclass
class Item:
    """One dataset image of a split (its file, label, mask and stated size)."""

    id: str
    path: Path
    defective: bool
    rle: dict
    height: int
    width: int
    masked: bool = True  # False: an image-level label; its stored mask is all zero and is not the truth


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


def dataset_items(version_dir: Path, doc: dict, split: str) -> list[Item]:
    """The items of one split of an opened dataset, in dataset.json order."""
    return [Item(s["id"], Path(version_dir) / s["image"], bool(s["defective"]), s["mask"], int(s["height"]),
                 int(s["width"]), bool(s.get("mask_labelled", True))) for s in doc["samples"] if s["split"] == split]


def split_items(card: dict, split: str, data=None, limit: int | None = None) -> list[Item]:
    """Samples of one split (falls back to none: the caller decides). `limit` keeps the first N, balanced by
    alternating defective / good images so small verification sets see both classes."""
    items = dataset_items(*open_model_dataset(card, data), split)
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


# ----------------------------------------------------------------------------- running a model
def _groups(algorithm: Algorithm, sizes: Iterable[tuple[int, int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of images (given by H x W) in batches of one network shape, at most `batch_size`, shapes in order
    of first appearance: the one batching every caller shares, so one backend gives the same figures anywhere."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    policy = algorithm.size_policy
    groups: dict[tuple, list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        shape = policy.network_shape(h, w) if policy.mode == "pad" else policy.size
        groups.setdefault(tuple(shape), []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            yield idx[s:s + batch_size]


def network_batches(algorithm: Algorithm, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH
                    ) -> Iterator[tuple[list[int], np.ndarray, list]]:
    """(indices, preprocessed batch, metas) over `images`, grouped by the network shape they reach (one batch
    must be one shape), at most `batch_size` at a time, in order of first appearance."""
    for part in _groups(algorithm, (img.shape[:2] for img in images), batch_size):
        x, metas = algorithm.preprocess([images[i] for i in part])
        yield part, x, metas


def run_logits(infer: Infer, algorithm: Algorithm, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH
               ) -> tuple[list[np.ndarray], list]:
    """Per-image logits (1 x H x W, network frame) and metas, in the order of `images`."""
    logits: list = [None] * len(images)
    metas: list = [None] * len(images)
    for part, x, ms in network_batches(algorithm, images, batch_size):
        out = infer(x)
        for k, i in enumerate(part):
            logits[i], metas[i] = out[k], ms[k]
    return logits, metas


def predictions_from_logits(algorithm: Algorithm, logits, metas, image_threshold: float | None = None
                            ) -> list[Prediction]:
    """Each image's logits -> its Prediction (the Algorithm's post-processing; `image_threshold` overrides)."""
    return [algorithm.postprocess(lg[None], [m], image_threshold=image_threshold)[0] for lg, m in zip(logits, metas)]


def predict_all(infer: Infer, algorithm: Algorithm, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH,
                image_threshold: float | None = None) -> list[Prediction]:
    """One Prediction per image (in order), batched by network shape; logits are post-processed batch by batch
    so that only the masks are kept."""
    preds: list = [None] * len(images)
    for part, x, ms in network_batches(algorithm, images, batch_size):
        for i, p in zip(part, algorithm.postprocess(infer(x), ms, image_threshold=image_threshold)):
            preds[i] = p
    return preds


def score_items(infer: Infer, algorithm: Algorithm, items: Sequence[Item], batch_size: int = DEFAULT_BATCH,
                image_threshold: float | None = None, keep_predictions: bool = False,
                progress: Callable[[int], None] | None = None) -> tuple[list[ImageScore], list[Prediction] | None]:
    """Run and score dataset items (Item, or anything with id, path, defective, rle, height, width), reading images
    and masks one batch at a time (a whole split never sits in memory). The batches are those `network_batches`
    makes over the split's images. Returns the per-image scores (in order) and, if asked, the predictions."""
    scores: list = [None] * len(items)
    preds: list | None = [None] * len(items) if keep_predictions else None
    for part in _groups(algorithm, ((it.height, it.width) for it in items), batch_size):
        images = [load_image(items[i].path) for i in part]
        for i, img in zip(part, images):
            if img.shape[:2] != (items[i].height, items[i].width):
                raise ModelDirError(f"{items[i].path}: the dataset states {items[i].height}x{items[i].width}, the "
                                    f"image is {img.shape[0]}x{img.shape[1]}; run `datatool validate` on the dataset")
        x, metas = algorithm.preprocess(images)
        for i, p in zip(part, algorithm.postprocess(infer(x), metas, image_threshold=image_threshold)):
            scores[i] = image_score(p, items[i].defective, load_mask(items[i].rle), getattr(items[i], "masked", True))
            if preds is not None:
                preds[i] = p
        if progress is not None:
            progress(len(part))
    return scores, preds


# ----------------------------------------------------------------------------- scoring
@dataclass
class ImageScore:
    """What scoring keeps of one image (no mask): enough to recompute every metric at any image threshold."""

    defective: bool  # ground truth
    fraction: float  # predicted defect fraction
    score: float  # image score (ranking)
    decision: bool  # predicted defective
    inter: int
    union: int
    gt_pixels: int
    value: float | None = None  # what the image threshold is compared with (Prediction.value); None = fraction
    masked: bool = True  # False: no mask (image-level label): inter = union = 0, left out of the pixel figures
    id: str = ""  # the dataset sample's id, where the caller names it (asset evaluate's report)

    def __post_init__(self) -> None:
        if self.value is None:
            self.value = self.fraction

    @property
    def iou(self) -> float:
        return self.inter / self.union if self.union else 1.0


def image_score(pred: Prediction, defective: bool, mask: np.ndarray, masked: bool = True) -> ImageScore:
    """One prediction against its label and ground-truth mask (same H x W as the prediction's mask). `masked`
    False: the image has a label but no mask; its pixels are not scored (inter = union = 0)."""
    gt = np.asarray(mask).astype(bool)
    pm = np.asarray(pred.mask).astype(bool)
    if gt.shape != pm.shape:
        raise ValueError(f"ground-truth mask {gt.shape} and predicted mask {pm.shape} differ in size")
    if not masked:
        return ImageScore(bool(defective), float(pred.defect_fraction), float(pred.score), bool(pred.defective),
                          0, 0, 0, float(pred.value), masked=False)
    inter = int(np.count_nonzero(pm & gt))
    return ImageScore(bool(defective), float(pred.defect_fraction), float(pred.score), bool(pred.defective),
                      inter, int(np.count_nonzero(pm)) + int(np.count_nonzero(gt)) - inter, int(np.count_nonzero(gt)),
                      float(pred.value))


def image_scores(preds: Sequence[Prediction], defective: Sequence[bool], masks: Iterable[np.ndarray]
                 ) -> list[ImageScore]:
    if len(preds) != len(defective):
        raise ValueError(f"{len(preds)} predictions but {len(defective)} labels")
    out = [image_score(p, d, m) for p, d, m in zip(preds, defective, masks)]
    if len(out) != len(preds):
        raise ValueError(f"{len(preds)} predictions but {len(out)} masks")
    return out


def score(preds: Sequence[Prediction], defective: Sequence[bool], masks: Iterable[np.ndarray]) -> dict:
    """Every metric of the module doc for predictions against labels and masks (in the same order)."""
    return metrics(image_scores(preds, defective, masks))


def metrics(scores: Sequence[ImageScore], image_threshold: float | None = None) -> dict:
    """The metrics of per-image scores (ImageScore, or anything with defective, fraction, score, inter, union and,
    without a threshold, decision). Decisions are `value >= image_threshold` when one is given (to re-decide at
    another threshold without running the model again; `value` is the defect fraction or a decision head's score,
    `fraction` for objects without one), else the recorded ones."""
    if not scores:
        raise ValueError("no images to score")
    y = np.array([s.defective for s in scores], dtype=bool)
    if image_threshold is None:
        d = np.array([s.decision for s in scores], dtype=bool)
    else:
        d = np.array([decision_value(s) for s in scores], dtype=np.float64) >= float(image_threshold)
    tp, fp = int(np.sum(d & y)), int(np.sum(d & ~y))
    fn, tn = int(np.sum(~d & y)), int(np.sum(~d & ~y))
    inter = sum(s.inter for s in scores)
    union = sum(s.union for s in scores)
    defective = [s for s in scores if s.defective]
    with_masks = [s for s in defective if getattr(s, "masked", True)]  # image-level labels have no pixel truth
    ranked = 0 < int(y.sum()) < len(y)
    ranking = np.array([s.score for s in scores], dtype=np.float64)
    return {
        "images": len(scores),
        "defective_images": len(defective),
        "pixel_iou": inter / union if union else 1.0,
        "mean_iou_defective": float(np.mean([s.iou for s in with_masks])) if with_masks else None,
        "accuracy": (tp + tn) / len(scores),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "ap": average_precision(ranking, y) if ranked else None,
        "auroc": auroc(ranking, y) if ranked else None,
    }


def decision_value(s) -> float:
    """What the image threshold is compared with for a scored image (ImageScore, or any object with
    `fraction` and optionally `value`)."""
    value = getattr(s, "value", None)
    return float(s.fraction if value is None else value)


def _curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives) at each distinct score, highest first."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last].astype(np.float64)
    return (last + 1) - tps, tps


def average_precision(scores, labels) -> float:
    """Step-wise average precision, sum over thresholds of (recall step) x precision (as torchmetrics)."""
    fps, tps = _curve(scores, labels)
    if tps[-1] == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auroc(scores, labels) -> float:
    """Area under the ROC curve (trapezoidal, from (0, 0); as torchmetrics)."""
    fps, tps = _curve(scores, labels)
    if tps[-1] == 0 or fps[-1] == 0:
        return float("nan")
    fpr, tpr = np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def agreement(a: Sequence[Prediction], b: Sequence[Prediction]) -> dict:
    """How two runs' predictions agree: decisions, and mask pixels (fraction equal over all images)."""
    if len(a) != len(b):
        raise ValueError(f"cannot compare {len(a)} predictions with {len(b)}")
    same = sum(int(x.defective == y.defective) for x, y in zip(a, b))
    pixels = sum(x.mask.size for x in a)
    equal = sum(int(np.count_nonzero(x.mask == y.mask)) for x, y in zip(a, b))
    return {"decisions_equal": same, "images": len(a), "mask_agreement": equal / pixels if pixels else 1.0}


__all__ = ["DEFAULT_BATCH", "ImageScore", "Item", "agreement", "auroc", "average_precision", "dataset_items",
           "decision_value",
           "first_split", "image_score", "image_scores", "metrics", "network_batches", "open_model_dataset",
           "predict_all", "predictions_from_logits", "run_logits", "score", "score_items", "split_items"]
