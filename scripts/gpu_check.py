#!/usr/bin/env python3
"""The prepared GPU check of the CUDA and TensorRT paths (run by scripts/gpu-check.sh, which makes the environment first).

On one NVIDIA GPU, from a clean checkout:
1. models: the demo model (--model DIR, or trained here with asset/configs/demo.yaml on the synthetic set unless
   --no-demo), and MobileNetV2-Unet / -PAN (--archs) at SIZE x SIZE (default 512), 3 channels, random encoder
   weights (no download) trained by `asset train` for a few epochs on small images so that decisions are
   meaningful (scripts/bench_models.py);
2. exports, each verified by `asset export` itself (parity gate on): onnx, onnx-int8, TensorRT fp32 / fp16 / int8;
   a refused export is a row with its reason, not a crash;
3. speed at batch 1 and 8 on random input of the model's size: PyTorch eager fp32 / fp16 on the same GPU, native
   TensorRT, and ONNX Runtime's CUDA and TensorRT execution providers (where onnxruntime-gpu runs). Each call is
   numpy in, numpy out (host <-> GPU copies included for every backend alike); median of timed calls after warm-up;
4. one Markdown table (stdout, and --out DIR/gpu-check.md with the JSON beside it) and the verdict against the goal:
   TensorRT FP16 at batch 1 at least 3x faster than the published A100 PyTorch figures (MobileNetV2-Unet 6.4 ms,
   -PAN 6.9 ms, -LinkNet 5.9 ms: targets 2.13 / 2.30 / 1.97 ms).
On a GPU without TensorRT (or without onnxruntime-gpu) everything else still runs: those rows say "unavailable"
with the reason, the verdict says the goal was not checked, and the exit status is 1.
Exit status: 0 when every export passed its verification and every timing ran, 1 otherwise, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Published A100 PyTorch figures at batch 1 (ms) for the same architectures; the goal is TensorRT FP16 >= 3x faster.
A100_MS = {"unet": 6.4, "pan": 6.9, "linknet": 5.9}
SPEEDUP_GOAL = 3.0
TITLES = {"unet": "Unet", "pan": "PAN", "linknet": "LinkNet", "fpn": "FPN", "unetplusplus": "UnetPlusPlus"}
TARGETS = [("pytorch", "fp32"), ("pytorch", "fp16"), ("tensorrt", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8"),
           ("onnxruntime-cuda", "fp32"), ("onnxruntime-cuda", "int8"), ("onnxruntime-tensorrt", "fp32"),
           ("onnxruntime-tensorrt", "fp16"), ("onnxruntime-tensorrt", "int8")]
EXPORTS = [("onnx", None), ("onnx-int8", None), ("tensorrt", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8")]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check at all (None: it can). A GPU without TensorRT still runs the rest."""
    from asset.backends import cuda_device_count

    if not cuda_device_count():
        return ("no NVIDIA GPU visible (libcuda finds none): run this on a machine with an NVIDIA GPU and its driver "
                "(in a container: --gpus all)")
    return None


def target_ms(arch: str) -> float | None:
    return round(A100_MS[arch] / SPEEDUP_GOAL, 2) if arch in A100_MS else None


def demo_model(out: Path) -> Path:
    """The demo model, trained here on the synthetic set with the demo config (the GPU makes it quick)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=REPO).stdout

    version_dir = run("datatool", "convert", "synthetic", "--raw", str(out / "raw"), "--out",
                      str(out / "data")).strip().splitlines()[-1]
    return Path(run("asset", "train", "--config", "asset/configs/demo.yaml", "--data", version_dir, "--out",
                    str(out / "model"), "--overwrite").strip().splitlines()[-1])


def arch_models(root: Path, archs: list[str], size: int, epochs: int) -> tuple[dict[str, Path], Path]:
    """(MobileNetV2-<arch> model directories, the dataset at size x size to export them with): each trained by
    `asset train` for `epochs` on 128 x 128 images whose square defects cover the same share of the image
    (scripts/bench_models.py), then exported and verified at full size on the size x size dataset (3 channels)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_models import make_dataset, train_model

    data = make_dataset(root / "data", size, n_train=48)
    fit = make_dataset(root / "fit", 128, defect=max(2, 32 * 128 // size), n_train=24)
    return {f"MobileNetV2-{TITLES.get(a, a)}": train_model(root / a, fit, a, "mobilenet_v2", epochs=epochs, log=log)
            for a in archs}, data


def export_all(model: Path, data: Path | None = None) -> list[dict]:
    from asset.export import ExportError, export_model

    rows = []
    for fmt, precision in EXPORTS:
        what = fmt if precision is None else f"{fmt}-{precision}"
        t = time.perf_counter()
        options = {"verify_images": 16} | ({"precision": precision} if precision else {})
        if fmt == "onnx-int8":
            options["calib_images"] = 16
        try:
            entry = export_model(model, fmt, data=data, device="cuda", log=lambda m, w=what: log(f"  {w}: {m}"),
                                 **options)
            v = entry.get("verification", {})
            rows.append({"export": what, "status": "ok", "seconds": round(time.perf_counter() - t, 1),
                         "max_abs_diff": v.get("max_abs_diff"), "decisions_equal": v.get("decisions_equal"),
                         "images": v.get("images"), "pixel_iou_change": v.get("pixel_iou_change"),
                         "accuracy_change": v.get("accuracy_change")})
        except ExportError as exc:
            rows.append({"export": what, "status": "failed", "reason": str(exc)})
        log(f"  {what}: {rows[-1]['status']}")
    return rows


def time_backend(model: Path, name: str, precision: str, batches: list[int], size: int, warmup: int, iters: int,
                 device: str = "cuda") -> list[dict]:
    """Median ms per call at each batch, timed as `asset benchmark --speed-only` times (asset.benchmark.run_speed:
    a random image preprocessed like a real one, `warmup` calls, then `iters`), or one row saying why not."""
    from asset.backends import backend_status
    from asset.benchmark import run_speed

    why = backend_status()[name]
    if why:
        return [{"backend": name, "precision": precision, "status": "unavailable", "reason": why}]
    try:
        doc = run_speed(model, targets=[(name, precision)], batches=tuple(batches), size=(size, size), device=device,
                        warmup=warmup, min_iter=iters, max_iter=iters, min_seconds=0.0, max_seconds=float("inf"))
    except Exception as exc:  # noqa: BLE001 - any engine error is a row
        return [{"backend": name, "precision": precision, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}]
    rows = []
    for r in doc["rows"]:
        if r["status"] != "ok":
            rows.append({"backend": name, "precision": precision, "status": "failed", "reason": r["reason"]})
            continue
        ms = r["p50_ms"] * r["batch"]
        rows.append({"backend": name, "precision": precision, "batch": r["batch"], "status": "ok", "ms": round(ms, 3),
                     "ms_per_image": r["p50_ms"], "fps": r["throughput"]})
    return rows


def gpu_name() -> str:
    try:
        from asset.export.tensorrt import gpu_info

        return gpu_info(0)["gpu"]
    except Exception:  # noqa: BLE001 - a label only
        return "GPU 0"


def markdown(doc: dict) -> str:
    trt = doc["versions"].get("tensorrt") or "not installed"
    lines = [f"### GPU check: {doc['gpu']}, {doc['size']}x{doc['size']}, TensorRT {trt}",
             "", "| model | backend | precision | batch | ms / batch | ms / image | FPS | vs PyTorch fp32 | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for model, m in doc["models"].items():
        base = {r["batch"]: r["ms"] for r in m["speed"] if r["backend"] == "pytorch" and r["precision"] == "fp32"
                and r["status"] == "ok"}
        for r in m["speed"]:
            if r["status"] != "ok":
                lines.append(f"| {model} | {r['backend']} | {r['precision']} | | | | | | {r['status']}: "
                             f"{r['reason'][:120]} |")
                continue
            ratio = f"{base[r['batch']] / r['ms']:.2f}x" if r["batch"] in base else ""
            lines.append(f"| {model} | {r['backend']} | {r['precision']} | {r['batch']} | {r['ms']:.2f} | "
                         f"{r['ms_per_image']:.2f} | {r['fps']:.0f} | {ratio} | ok |")
    lines += ["", "| model | export | verification | figures |", "|---|---|---|---|"]
    for model, m in doc["models"].items():
        for e in m["exports"]:
            if e["status"] == "ok":
                figs = f"max diff {e['max_abs_diff']:.3g}, decisions {e['decisions_equal']}/{e['images']}"
                if e.get("pixel_iou_change") is not None:
                    figs += f", pixel IoU change {e['pixel_iou_change']:+.4f}"
                lines.append(f"| {model} | {e['export']} | passed | {figs} |")
            else:
                lines.append(f"| {model} | {e['export']} | failed | {e['reason'][:160]} |")
    lines += ["", "Verdict (goal: TensorRT FP16 at batch 1 >= 3x faster than the published A100 PyTorch figure):"]
    for v in doc["verdict"]:
        lines.append(f"- {v['text']}")
    return "\n".join(lines) + "\n"


def verdict(doc: dict) -> list[dict]:
    out = []
    for model, m in doc["models"].items():
        arch = m["arch"]
        goal = target_ms(arch)
        fp16 = next((r for r in m["speed"] if r["backend"] == "tensorrt" and r["precision"] == "fp16"
                     and r.get("batch") == 1 and r["status"] == "ok"), None)
        if goal is None:
            text = f"{model}: no published A100 figure (measured only)"
            met = None
        elif fp16 is None:
            text = f"{model}: TensorRT FP16 batch 1 did not run: goal {goal} ms NOT checked"
            met = False
        else:
            met = fp16["ms"] <= goal
            text = (f"{model}: TensorRT FP16 batch 1 {fp16['ms']:.2f} ms on {doc['gpu']} vs target {goal} ms "
                    f"(A100 PyTorch {A100_MS[arch]} ms / 3): {'MET' if met else 'NOT MET'} "
                    f"({A100_MS[arch] / fp16['ms']:.1f}x the published figure)")
        out.append({"model": model, "target_ms": goal, "met": met, "text": text})
    return out


def write_results(doc: dict, out: Path) -> str:
    """The verdict, then gpu-check.json and gpu-check.md in `out`, each written whole (modeldir's atomic writes)."""
    from asset.files import write_text_atomic

    doc["verdict"] = verdict(doc)
    text = markdown(doc)
    write_text_atomic(out / "gpu-check.json", json.dumps(doc, indent=1))
    write_text_atomic(out / "gpu-check.md", text)
    return text


def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("torch", "tensorrt", "tensorrt-cu12", "onnxruntime-gpu", "onnxruntime", "cuda-python",
                 "onnxconverter-common"):
        try:
            out[name.replace("-cu12", "")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="the demo model directory to use (default: train it here)")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo model")
    ap.add_argument("--archs", default="unet,pan", help="MobileNetV2 architectures (default unet,pan; + linknet)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--epochs", type=int, default=20, help="`asset train` epochs of the MobileNetV2 models (128x128)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--out", type=Path, default=REPO / "out" / "gpu-check")
    args = ap.parse_args(argv)
    why = no_gpu_reason()
    if why:
        print(f"gpu-check: {why}", file=sys.stderr)
        return 2
    from asset.backends import backend_status

    for name, reason in backend_status().items():
        if reason and name in {t for t, _ in TARGETS}:
            log(f"gpu-check: {name} cannot run here, its rows will say so: {reason}")
    batches = [int(b) for b in args.batches.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.out))
    models: dict[str, tuple[str, Path]] = {}
    if args.model:
        models["demo"] = ("demo", args.model.resolve())
    elif not args.no_demo:
        log("== demo model: training on the synthetic set (asset/configs/demo.yaml)")
        models["demo"] = ("demo", demo_model(work / "demo"))
    archs = [a for a in args.archs.split(",") if a]
    log(f"== MobileNetV2 {', '.join(archs)} at {args.size}x{args.size}: asset train, {args.epochs} epochs")
    trained, data = arch_models(work, archs, args.size, args.epochs)
    for title, path in trained.items():
        models[title] = (path.name, path)
    doc = {"gpu": gpu_name(), "size": args.size, "batches": batches, "versions": versions(), "models": {}}
    text = write_results(doc, args.out)
    for title, (arch, path) in models.items():
        log(f"== {title}: exports")
        exports = export_all(path, None if arch == "demo" else data)
        speed = []
        for name, precision in TARGETS:
            log(f"== {title}: timing {name} {precision}")
            size = args.size
            if arch == "demo":
                from asset import modeldir

                size = int((modeldir.verify(path).get("input") or {}).get("train_size", [args.size])[0])
            speed += time_backend(path, name, precision, batches, size, args.warmup, args.iters)
        doc["models"][title] = {"arch": arch, "dir": str(path), "exports": exports, "speed": speed}
        text = write_results(doc, args.out)  # after each model: a check cut short still leaves its figures
    print(text)
    failed = [e for m in doc["models"].values() for e in m["exports"] if e["status"] != "ok"]
    failed += [r for m in doc["models"].values() for r in m["speed"] if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
