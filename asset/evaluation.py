"""Evaluating a model over a split (through `asset.scoring`, like every other figure), and the report.

A *runner* is any callable float32 NCHW numpy batch -> logits numpy N x 1 x H x W: a backend's `infer`
(`asset evaluate --backend`), or `torch_runner(net)` for a network in memory (training, the sweep).
No torch is imported here unless `torch_runner` is used.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asset import scoring
from asset.algorithm import Algorithm, load_image, load_mask

Runner = Callable[[np.ndarray], np.ndarray]


def torch_runner(net, device: str = "cpu") -> Runner:
    import torch

    net = net.to(device).eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return run


def evaluate_samples(runner: Runner, algorithm: Algorithm, samples: list, batch_size: int = scoring.DEFAULT_BATCH,
                     progress: bool = False) -> list[scoring.ImageScore]:
    """One ImageScore per sample (asset.scoring.Item), named by the sample's id, scored by `asset.scoring`."""
    from tqdm import tqdm

    with tqdm(total=len(samples), desc="evaluating", unit="img", disable=not progress) as bar:
        scores, _ = scoring.score_items(runner, algorithm, samples, batch_size, progress=bar.update)
    return [dataclasses.replace(r, id=s.id) for s, r in zip(samples, scores)]


def compute_metrics(records: list[scoring.ImageScore], image_threshold: float) -> dict:
    """`asset.scoring.metrics` at `image_threshold`: pixel IoU (dataset-level and mean over defective images),
    image accuracy, precision, recall, confusion matrix ([[TN, FP], [FN, TP]]), AP and AUROC of the image score."""
    if not records:
        raise ValueError("no images to evaluate")
    m = scoring.metrics(records, image_threshold)
    return {"images": m.pop("images"), "defective_images": m.pop("defective_images"),
            "image_threshold": float(image_threshold), **m}


def worst_cases(records: list[scoring.ImageScore], image_threshold: float, k: int = 4) -> dict[str, list[scoring.ImageScore]]:
    """False positives with the highest scores and false negatives with the lowest (then low-IoU defective hits)."""
    fps = sorted((r for r in records if not r.defective and r.value >= image_threshold), key=lambda r: -r.score)
    fns = sorted((r for r in records if r.defective and r.value < image_threshold), key=lambda r: r.score)
    low = sorted((r for r in records if r.defective and r.masked and r.value >= image_threshold), key=lambda r: r.iou)
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


def write_report(out_dir: Path, metrics: dict, records: list[scoring.ImageScore], samples: list, runner: Runner,
                 algorithm: Algorithm, title: str, k: int = 4) -> Path:
    """metrics.json, report.md and overlays/*.png under out_dir. Returns the report path."""
    import io

    from PIL import Image

    from asset.files import write_bytes_atomic, write_json_atomic, write_text_atomic

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
            pred = scoring.predict_all(runner, algorithm, [image], image_threshold=t)[0]
            name = f"{section}-{r.id.replace('/', '_')}.png"
            png = io.BytesIO()
            Image.fromarray(overlay_panel(image, load_mask(s.rle), pred.mask)).save(png, format="PNG")
            write_bytes_atomic(out_dir / "overlays" / name, png.getvalue())
            lines.append(f"**{r.id}**: defect fraction {r.fraction:.5f}, decided on {r.value:.5f} (threshold "
                         f"{t:.5f}), IoU {r.iou:.3f}")
            lines.append("")
            lines.append(f"![{r.id}](overlays/{name})")
            lines.append("")
    report = out_dir / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    write_json_atomic(out_dir / "predictions.json", [r.__dict__ for r in records])
    return report


def load_metrics(path: Path) -> dict:
    return json.loads(Path(path).read_text())
