"""The one way a model's predictions are batched and scored, whatever runs it (numpy only, no torch).

Training (asset/training/module.py logs the same definitions through torchmetrics), `asset evaluate` (any
backend), export verification and `asset benchmark` all score through here, so a figure means the same
everywhere:

    preds = predict_all(backend.infer, algorithm, images)        # batched by network shape
    metrics = score(preds, [item.defective for item in items], masks)

Definitions (ground truth "defective" = the image's label; masks at the original image size):
- accuracy, precision, recall, confusion matrix: of the image decision (`Prediction.defective`, i.e. defect
  fraction >= image threshold) against the label; precision / recall are 0 when undefined.
- ap, auroc: of the image score (`Prediction.score`) against the label, as torchmetrics' binary_average_precision
  and binary_auroc define them (step-wise AP over every distinct score, trapezoidal ROC area); None unless both
  classes are present. Computed here in numpy because edge images ship no torch (tests/asset/test_scoring.py
  checks they equal torchmetrics').
- pixel_iou: dataset level, sum of intersections / sum of unions over all images (1.0 when both are empty).
- mean_iou_defective: mean of the per-image IoU over images labelled defective (None when there are none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from asset.algorithm import Algorithm, Prediction

Infer = Callable[[np.ndarray], np.ndarray]  # float32 N x C x H x W -> float32 N x 1 x H x W logits
DEFAULT_BATCH = 8


# ----------------------------------------------------------------------------- running a model
def network_batches(algorithm: Algorithm, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH
                    ) -> Iterator[tuple[list[int], np.ndarray, list]]:
    """(indices, preprocessed batch, metas) over `images`, grouped by the network shape they reach (one batch
    must be one shape), at most `batch_size` at a time, in order of first appearance."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
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

    @property
    def iou(self) -> float:
        return self.inter / self.union if self.union else 1.0


def image_score(pred: Prediction, defective: bool, mask: np.ndarray) -> ImageScore:
    """One prediction against its label and ground-truth mask (same H x W as the prediction's mask)."""
    gt = np.asarray(mask).astype(bool)
    pm = np.asarray(pred.mask).astype(bool)
    if gt.shape != pm.shape:
        raise ValueError(f"ground-truth mask {gt.shape} and predicted mask {pm.shape} differ in size")
    inter = int(np.count_nonzero(pm & gt))
    return ImageScore(bool(defective), float(pred.defect_fraction), float(pred.score), bool(pred.defective),
                      inter, int(np.count_nonzero(pm)) + int(np.count_nonzero(gt)) - inter, int(np.count_nonzero(gt)))


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
    """The metrics of per-image scores; decisions are `fraction >= image_threshold` when one is given (to
    re-decide at another threshold without running the model again), else the recorded ones."""
    if not scores:
        raise ValueError("no images to score")
    y = np.array([s.defective for s in scores], dtype=bool)
    if image_threshold is None:
        d = np.array([s.decision for s in scores], dtype=bool)
    else:
        d = np.array([s.fraction for s in scores], dtype=np.float64) >= float(image_threshold)
    tp, fp = int(np.sum(d & y)), int(np.sum(d & ~y))
    fn, tn = int(np.sum(~d & y)), int(np.sum(~d & ~y))
    inter = sum(s.inter for s in scores)
    union = sum(s.union for s in scores)
    defective = [s for s in scores if s.defective]
    ranked = 0 < int(y.sum()) < len(y)
    ranking = np.array([s.score for s in scores], dtype=np.float64)
    return {
        "images": len(scores),
        "defective_images": len(defective),
        "pixel_iou": inter / union if union else 1.0,
        "mean_iou_defective": float(np.mean([s.iou for s in defective])) if defective else None,
        "accuracy": (tp + tn) / len(scores),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "ap": average_precision(ranking, y) if ranked else None,
        "auroc": auroc(ranking, y) if ranked else None,
    }


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


__all__ = ["DEFAULT_BATCH", "ImageScore", "agreement", "auroc", "average_precision", "image_score", "image_scores",
           "metrics", "network_batches", "predict_all", "predictions_from_logits", "run_logits", "score"]
