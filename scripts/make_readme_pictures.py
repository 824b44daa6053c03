"""Draw the pictures of README.md and the docs (docs/assets/overlay.png, docs/assets/pareto.png) from real outputs.

The input is one small real sweep on the synthetic DAGM-like set (128x128; 384 train / 96 val / 240 test images):
two models with the sweep demo's training settings (asset/configs/sweeps/demo.yaml: Jaccard loss, AdamW lr 0.002,
cosine with 10 warm-up steps, batch 16), 3 epochs each without a time cap, each evaluated, exported to ONNX and
benchmarked, then its report:

    v=$(datatool convert synthetic --raw out/readme-pictures/raw --out out/readme-pictures/data | tail -n 1)
    asset sweep --data "$v" --out out/readme-pictures/sweep --config asset/configs/sweeps/demo.yaml \
        --archs unet --encoders tu-efficientnet_lite0,mobilenet_v2 \
        --set trainer.max_time=null --set trainer.max_epochs=3
    asset report out/readme-pictures/sweep --out out/readme-pictures/report --budget-ms 12 \
        --device build-host:onnxruntime
    python scripts/make_readme_pictures.py          # then commit docs/assets/

The overlay is the sweep's EfficientNet-Lite0 U-Net (pretrained, the architecture and encoder of the demo recipe,
asset/configs/demo.yaml) on the first --count defective test images in dataset order (not chosen by how well they
came out): image | ground truth (green) | prediction (red), drawn by the evaluation report's own `overlay_panel`.
The Pareto plot is the report's PNG for the ONNX Runtime column. A 2-model sweep of 3 epochs on a shared 2-core
machine: the pictures show what the tools draw; the figures in them are not results (docs/results.md has those).
docs/assets/pictures.json records what made them: date, model, dataset version, the model's test metrics, the
sweep's models. Both images are palette PNGs well under 200 KB.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 200_000  # bytes per committed picture


def _save_small(img, path: Path, colours: int = 128) -> int:
    from PIL import Image

    img.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, format="PNG", optimize=True)
    return path.stat().st_size


def overlay(model: Path, data: str | None, count: int, scale: int, out: Path) -> dict:
    from PIL import Image

    from asset import modeldir, scoring
    from asset.algorithm import load_image, load_mask
    from asset.evaluation import overlay_panel
    from asset.predictor import Predictor

    card = modeldir.verify(model)
    version_dir, doc = scoring.open_model_dataset(card, data)
    items = [i for i in scoring.dataset_items(version_dir, doc, "test") if i.defective][:count]
    if not items:
        sys.exit(f"error: {version_dir} has no defective test image")
    backend = "onnxruntime" if "onnx" in card.get("exports", {}) else "pytorch"
    predictor = Predictor(model, backend=backend)
    try:
        images = [load_image(i.path) for i in items]
        preds = predictor.predict(images)
    finally:
        predictor.close()
    rows, shown = [], []
    for item, image, pred in zip(items, images, preds):
        gt = load_mask(item.rle)
        panel = overlay_panel(image, gt, pred.mask)
        rows.append(np.repeat(np.repeat(panel, scale, axis=0), scale, axis=1))
        inter = int(np.count_nonzero(gt.astype(bool) & pred.mask.astype(bool)))
        union = int(np.count_nonzero(gt.astype(bool) | pred.mask.astype(bool)))
        shown.append({"id": item.id, "decided_defective": bool(pred.defective),
                      "iou": round(inter / union, 3) if union else None})
    gap = np.full((4 * scale, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0)
    size = _save_small(Image.fromarray(grid), out)
    result = model.parent / "result.json"  # a sweep model: its test evaluation
    metrics = (json.loads(result.read_text()).get("metrics") or {}).get("test") or {} if result.is_file() else {}
    return {"file": out.name, "bytes": size, "backend": backend, "model": {
        "arch": card["arch"], "encoder": card["encoder"],
        "epochs": len(card.get("training", {}).get("val_history", [])) or None},
        "dataset": {"name": doc["name"], "version": doc["version"]}, "images": shown,
        "test_metrics": {k: metrics[k] for k in ("accuracy", "pixel_iou", "ap") if k in metrics}}


def pareto(report: Path, column: str, width: int, out: Path) -> dict:
    from PIL import Image

    plots = sorted((report / "plots").glob(f"*{column}*.png"))
    if not plots:
        sys.exit(f"error: no plot for {column!r} in {report / 'plots'} (asset report writes them)")
    img = Image.open(plots[0])
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    size = _save_small(img, out, colours=64)
    doc = json.loads((report / "report.json").read_text()) if (report / "report.json").is_file() else {}
    return {"file": out.name, "bytes": size, "source": str(plots[0].relative_to(report)),
            "report_created": doc.get("created")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    work = Path("out/readme-pictures")
    p.add_argument("--model", type=Path, default=work / "sweep" / "synthetic" / "unet--tu-efficientnet_lite0" / "model",
                   help="the model of the overlay (default: the sweep's EfficientNet-Lite0 U-Net)")
    p.add_argument("--data", help="its dataset (default: the one in its model card)")
    p.add_argument("--report", type=Path, default=work / "report", help="an `asset report` output folder")
    p.add_argument("--column", default="onnxruntime", help="which device column's Pareto plot (default onnxruntime)")
    p.add_argument("--count", type=int, default=3, help="defective test images in the overlay (default 3)")
    p.add_argument("--scale", type=int, default=2, help="pixel repetition of the overlay (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "assets", help="where the pictures go")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"date": date.today().isoformat(), "script": "scripts/make_readme_pictures.py",
              "overlay": overlay(args.model, args.data, args.count, args.scale, args.out / "overlay.png"),
              "pareto": pareto(args.report, args.column, 720, args.out / "pareto.png")}
    sweep = Path(args.report).parent / "sweep"
    results = sorted(sweep.glob("*/*/result.json"))
    if results:
        record["pareto"]["sweep_models"] = [
            {k: r.get(k) for k in ("arch", "encoder", "status")}
            | {"epochs": (r.get("training") or {}).get("epochs"),
               "test_accuracy": ((r.get("metrics") or {}).get("test") or {}).get("accuracy")}
            for r in (json.loads(f.read_text()) for f in results)]
    (args.out / "pictures.json").write_text(json.dumps(record, indent=1) + "\n")
    for key in ("overlay", "pareto"):
        if record[key]["bytes"] > LIMIT:
            sys.exit(f"error: {record[key]['file']} is {record[key]['bytes']} bytes, over {LIMIT}")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
