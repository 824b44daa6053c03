"""Running a model over a split through the shared `Algorithm`, metrics (torchmetrics) and the report.

A *runner* is any callable float32 NCHW numpy batch -> logits numpy N x 1 x H x W. `torch_runner(net)`
wraps a PyTorch network; export backends (ONNX Runtime, OpenVINO, TensorRT) provide their own, so
every backend is measured by the same code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asset.algorithm import Algorithm, Prediction
from asset.training.data import Sample, load_image, load_mask

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Record:
    """One evaluated image (threshold-independent: decisions are recomputed from `fraction`)."""

    id: str
    defective: bool  # ground truth
    fraction: float
    score: float
    inter: int
    union: int
    gt_pixels: int

    @property
    def iou(self) -> float:
        return self.inter / self.union if self.union else 1.0


def torch_runner(net, device: str = "cpu") -> Runner:
    import torch

    net = net.to(device).eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return run


def predict_images(runner: Runner, algorithm: Algorithm, images: list[np.ndarray], keep_prob: bool = False
                   ) -> list[Prediction]:
    x, metas = algorithm.preprocess(images)
    return algorithm.postprocess(runner(x), metas, keep_prob=keep_prob)


def _batches(samples: list[Sample], batch_size: int):
    """Consecutive samples of the same original size, at most batch_size at a time."""
    batch: list[Sample] = []
    for s in samples:
        if batch and (len(batch) == batch_size or (s.height, s.width) != (batch[0].height, batch[0].width)):
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


def evaluate_samples(runner: Runner, algorithm: Algorithm, samples: list[Sample], batch_size: int = 16,
                     progress: bool = False) -> list[Record]:
    from tqdm import tqdm

    records = []
    bar = tqdm(total=len(samples), desc="evaluating", unit="img", disable=not progress)
    for batch in _batches(samples, batch_size):
        images = [load_image(s.path) for s in batch]
        preds = predict_images(runner, algorithm, images)
        for s, p in zip(batch, preds):
            gt = load_mask(s.rle).astype(bool)
            pm = p.mask.astype(bool)
            records.append(Record(s.id, s.defective, p.defect_fraction, p.score, int((pm & gt).sum()),
                                  int((pm | gt).sum()), int(gt.sum())))
        bar.update(len(batch))
    bar.close()
    return records


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def compute_metrics(records: list[Record], image_threshold: float) -> dict:
    """Pixel IoU (dataset-level and mean over defective images), image accuracy, precision, recall,
    confusion matrix ([[TN, FP], [FN, TP]]), AP and AUROC of the image score."""
    import torch
    from torchmetrics.functional.classification import (
        binary_accuracy,
        binary_auroc,
        binary_average_precision,
        binary_confusion_matrix,
        binary_precision,
        binary_recall,
    )

    if not records:
        raise ValueError("no images to evaluate")
    y = torch.tensor([r.defective for r in records], dtype=torch.long)
    decision = torch.tensor([r.fraction >= image_threshold for r in records], dtype=torch.long)
    score = torch.tensor([r.score for r in records], dtype=torch.float64)
    inter = sum(r.inter for r in records)
    union = sum(r.union for r in records)
    defective = [r for r in records if r.defective]
    both_classes = 0 < int(y.sum()) < len(records)
    cm = binary_confusion_matrix(decision, y).tolist()
    return {
        "images": len(records),
        "defective_images": len(defective),
        "image_threshold": float(image_threshold),
        "pixel_iou": inter / union if union else 1.0,
        "mean_iou_defective": float(np.mean([r.iou for r in defective])) if defective else None,
        "accuracy": _num(binary_accuracy(decision, y)),
        "precision": _num(binary_precision(decision, y, zero_division=0)),
        "recall": _num(binary_recall(decision, y, zero_division=0)),
        "confusion_matrix": {"tn": cm[0][0], "fp": cm[0][1], "fn": cm[1][0], "tp": cm[1][1]},
        "ap": _num(binary_average_precision(score, y)) if both_classes else None,
        "auroc": _num(binary_auroc(score, y)) if both_classes else None,
    }


def worst_cases(records: list[Record], image_threshold: float, k: int = 4) -> dict[str, list[Record]]:
    """False positives with the highest scores and false negatives with the lowest (then low-IoU defective hits)."""
    fps = sorted((r for r in records if not r.defective and r.fraction >= image_threshold), key=lambda r: -r.score)
    fns = sorted((r for r in records if r.defective and r.fraction < image_threshold), key=lambda r: r.score)
    low = sorted((r for r in records if r.defective and r.fraction >= image_threshold), key=lambda r: r.iou)
    return {"false_positives": fps[:k], "false_negatives": fns[:k], "lowest_iou_detections": low[:k]}


# ----------------------------------------------------------------------------- report
def overlay_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """[image | ground truth (green) | prediction (red)] side by side, RGB uint8."""
    import cv2

    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    rgb = rgb[:, :, :3].astype(np.float32)

    def tint(mask, colour):
        out = rgb.copy()
        m = mask.astype(bool)
        out[m] = 0.5 * out[m] + 0.5 * np.asarray(colour, np.float32)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        out = np.ascontiguousarray(out.astype(np.uint8))
        cv2.drawContours(out, contours, -1, colour, 1)
        return out

    sep = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([rgb.astype(np.uint8), sep, tint(gt, (0, 255, 0)), sep, tint(pred, (255, 0, 0))], axis=1)


def write_report(out_dir: Path, metrics: dict, records: list[Record], samples: list[Sample], runner: Runner,
                 algorithm: Algorithm, title: str, k: int = 4) -> Path:
    """metrics.json, report.md and overlays/*.png under out_dir. Returns the report path."""
    from PIL import Image

    from asset.modeldir import write_json_atomic, write_text_atomic

    out_dir = Path(out_dir)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", metrics)
    by_id = {s.id: s for s in samples}
    cm = metrics["confusion_matrix"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for key in ("images", "defective_images", "image_threshold", "pixel_iou", "mean_iou_defective", "accuracy",
                "precision", "recall", "ap", "auroc"):
        lines.append(f"| {key} | {fmt(metrics[key])} |")
    lines += ["", "Confusion matrix (rows: truth, columns: decision)", "", "| | OK | defective |", "|---|---|---|",
              f"| OK | {cm['tn']} | {cm['fp']} |", f"| defective | {cm['fn']} | {cm['tp']} |", ""]
    t = metrics["image_threshold"]
    for section, recs in worst_cases(records, t, k).items():
        lines.append(f"## {section.replace('_', ' ')} ({len(recs)} shown)")
        lines.append("")
        if not recs:
            lines += ["none", ""]
            continue
        lines.append("image | ground truth (green) | prediction (red)")
        lines.append("")
        for r in recs:
            s = by_id[r.id]
            image = load_image(s.path)
            pred = predict_images(runner, algorithm, [image])[0]
            name = f"{section}-{r.id.replace('/', '_')}.png"
            Image.fromarray(overlay_panel(image, load_mask(s.rle), pred.mask)).save(out_dir / "overlays" / name)
            lines.append(f"**{r.id}**: defect fraction {r.fraction:.5f} (threshold {t:.5f}), IoU {r.iou:.3f}")
            lines.append("")
            lines.append(f"![{r.id}](overlays/{name})")
            lines.append("")
    report = out_dir / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    write_json_atomic(out_dir / "predictions.json", [r.__dict__ for r in records])
    return report


def load_metrics(path: Path) -> dict:
    return json.loads(Path(path).read_text())
