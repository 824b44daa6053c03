"""Draw the pictures of README.md and the docs (docs/assets/overlay.png, docs/assets/pareto.png) from real outputs.

Overlay (--model): a model and the held-out test split it was scored on. The committed picture is fold 0, seed 0 of a
3-fold cross-validation on a real KolektorSDD subset (129 images: 62 train, 16 val, 51 test; `datatool convert
kolektorsdd --annotation fine`), an EfficientNet-Lite0 U-Net with the KolektorSDD recipe:

    asset cv --config asset/configs/kolektorsdd.yaml --data DATA --folds 3 --seeds 2 --out CV \
        --set trainer.max_time=null --set trainer.max_epochs=6 --set model.decision=head --no-progress
    python scripts/make_readme_pictures.py --model CV/runs/fold0-seed0/model --crop 256 --report REPORT

It shows the first --count defective test images in dataset order (not chosen by how well they came out), each
cropped to --crop rows around its ground truth: image | ground truth (green) | prediction (red), drawn by the
evaluation report's own `overlay_panel`. KolektorSDD: Tabernik, Sela, Skvarc, Skocaj 2019, Kolektor Group d.o.o. /
ViCoS, CC BY-NC-SA 4.0 (the picture is shared under the same licence).

Pareto plot (--report): the PNG that `asset report` draws for the ONNX Runtime column. The committed one is a tiny
real sweep (2 models, 3 epochs each on a 60-image synthetic set; it shows the plot, its figures are not results):

    v=$(datatool convert synthetic --raw RAW --out DATA --classes 2 --train-per-class 20 --test-per-class 10 | tail -n 1)
    asset sweep --data "$v" --out SWEEP --config asset/configs/sweeps/demo.yaml --archs unet \
        --encoders tu-efficientnet_lite0,mobilenet_v2 --set trainer.max_time=null --set trainer.max_epochs=3
    asset report SWEEP --out REPORT --budget-ms 12 --device build-host:onnxruntime

docs/assets/pictures.json records what made them (date, model, dataset version, the images shown, the sweep's
models). Both pictures are palette PNGs well under 200 KB (checked).
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


def _save_small(img, path: Path, colours: int = 128, grays: int = 0) -> int:
    """A palette PNG. With `grays`, gray pixels (R = G = B) keep a gray of their own (`grays` levels) and only the
    coloured ones share the other palette entries: a dark crack must not borrow the red of the prediction."""
    from PIL import Image

    img = img.convert("RGB")
    if not grays:
        img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, format="PNG", optimize=True)
        return path.stat().st_size
    a = np.asarray(img)
    gray = (a[..., 0] == a[..., 1]) & (a[..., 1] == a[..., 2])
    step = 256 / grays
    index = np.zeros(a.shape[:2], np.uint8)
    index[gray] = (a[..., 0][gray] / step).astype(np.uint8)
    palette = [int(min(255, round((i + 0.5) * step))) for i in range(grays) for _ in range(3)]
    coloured = a[~gray]
    if coloured.size:
        strip = Image.fromarray(coloured.reshape(1, -1, 3))
        q = strip.quantize(min(colours, 256 - grays), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        index[~gray] = np.asarray(q).reshape(-1) + grays
        palette += q.getpalette()[: 3 * (256 - grays)]
    out = Image.fromarray(index, mode="P")
    out.putpalette(palette[:768])
    out.save(path, format="PNG", optimize=True)
    return path.stat().st_size


def _crop_rows(arrays: list[np.ndarray], gt: np.ndarray, rows: int) -> list[np.ndarray]:
    """The same `rows` rows of each array, centred on the ground truth's middle row."""
    if not rows or gt.shape[0] <= rows:
        return arrays
    ys = np.nonzero(gt)[0]
    mid = int(ys.mean()) if ys.size else gt.shape[0] // 2
    top = min(max(0, mid - rows // 2), gt.shape[0] - rows)
    return [a[top:top + rows] for a in arrays]


def overlay(model: Path, data: str | None, count: int, scale: int, out: Path, crop: int = 0,
            width: int = 900) -> dict:
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
        image, gt_c, mask = _crop_rows([image, gt, pred.mask], gt, crop)
        panel = overlay_panel(image, gt_c, mask)
        rows.append(np.repeat(np.repeat(panel, scale, axis=0), scale, axis=1))
        inter = int(np.count_nonzero(gt.astype(bool) & pred.mask.astype(bool)))
        union = int(np.count_nonzero(gt.astype(bool) | pred.mask.astype(bool)))
        shown.append({"id": item.id, "decided_defective": bool(pred.defective),
                      "iou": round(inter / union, 3) if union else None})
    gap = np.full((4 * scale, rows[0].shape[1], 3), 255, np.uint8)
    grid = Image.fromarray(np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0))
    if grid.width > width:
        grid = grid.resize((width, round(grid.height * width / grid.width)), Image.Resampling.BOX)
    size = _save_small(grid, out, colours=64, grays=48)
    metrics = card.get("metrics", {}).get("test") or {}
    return {"file": out.name, "bytes": size, "backend": backend, "model": {
        "arch": card["arch"], "encoder": card["encoder"],
        "epochs": len(card.get("training", {}).get("val_history", [])) or None},
        "dataset": {"name": doc["name"], "version": doc["version"], "license": doc.get("license")}, "images": shown,
        "crop_rows": crop or None, "test_metrics": {k: metrics[k] for k in ("accuracy", "pixel_iou", "ap") if k in metrics}}


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
    p.add_argument("--model", type=Path, help="the model of the overlay (a model directory)")
    p.add_argument("--only", choices=["overlay", "pareto"], help="draw one of the two (default both)")
    p.add_argument("--data", help="its dataset (default: the one in its model card)")
    p.add_argument("--report", type=Path, default=work / "report", help="an `asset report` output folder")
    p.add_argument("--column", default="onnxruntime", help="which device column's Pareto plot (default onnxruntime)")
    p.add_argument("--count", type=int, default=3, help="defective test images in the overlay (default 3)")
    p.add_argument("--scale", type=int, default=1, help="pixel repetition of the overlay (default 1)")
    p.add_argument("--crop", type=int, default=0, help="rows kept around each ground truth (default 0: all)")
    p.add_argument("--width", type=int, default=900, help="the overlay is shrunk to this width (default 900)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "assets", help="where the pictures go")
    args = p.parse_args(argv)
    if args.only != "pareto" and args.model is None:
        p.error("--model is needed for the overlay")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = args.out / "pictures.json"
    record = json.loads(meta.read_text()) if meta.is_file() else {}
    record["script"] = "scripts/make_readme_pictures.py"
    if args.only in (None, "overlay"):
        record["overlay"] = overlay(args.model, args.data, args.count, args.scale, args.out / "overlay.png", args.crop,
                                    args.width) | {"date": date.today().isoformat()}
    if args.only in (None, "pareto"):
        record["pareto"] = pareto(args.report, args.column, 720, args.out / "pareto.png") | {
            "date": date.today().isoformat()}
        results = sorted(Path(args.report).parent.glob("sweep*/*/*/result.json"))
        record["pareto"]["sweep_models"] = [
            {k: r.get(k) for k in ("arch", "encoder", "status")}
            | {"epochs": (r.get("training") or {}).get("epochs"),
               "test_accuracy": ((r.get("metrics") or {}).get("test") or {}).get("accuracy")}
            for r in (json.loads(f.read_text()) for f in results)]
    meta.write_text(json.dumps(record, indent=1) + "\n")
    for key in ("overlay", "pareto"):
        if key in record and record[key]["bytes"] > LIMIT:
            sys.exit(f"error: {record[key]['file']} is {record[key]['bytes']} bytes, over {LIMIT}")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
