#!/usr/bin/env python3
"""Inference speed: the project's backends against their baselines, on one model and input, in one run.

For MobileNetV2-Unet and MobileNetV2-Linknet (random weights, encoder_weights=None, 3 channels) at 512x512,
batch 1, each exported through `asset export` (onnx, onnx-int8, openvino) into a temporary model directory:
- our ONNX Runtime backend vs a bare `onnxruntime.InferenceSession.run` on the same preprocessed tensor (goal <= 1.05x);
- ONNX Runtime vs PyTorch eager on the CPU (goal >= 2x);
- ONNX Runtime INT8 (static QDQ, per-channel) vs FP32 (goal >= 1.5x), with the accuracy / IoU change;
- OpenVINO vs ONNX Runtime;
- every backend next to the FLOP floor: FLOPs (torch.utils.flop_counter) / the sgemm rate of this machine, measured
  here with a numpy and a torch matmul.
Engines take turns in blocks of timed calls (round robin) so machine noise hits all; medians after warm-up.
The bare baseline uses the same file and session options as our backend (intra-op threads = cores, all graph
optimisations), so its ratio is our wrapper's overhead alone.
Prints one Markdown row per comparison (| what | ours | baseline | ratio |) and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sgemm_gflops(n: int = 2048, reps: int = 5) -> dict:
    """Best-of sgemm rate (GFLOP/s) of numpy and torch on this machine, float32 n x n."""
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = {}
    for name, mm, x, y in (("numpy", np.matmul, a, b), ("torch", torch.mm, torch.from_numpy(a), torch.from_numpy(b))):
        mm(x, y)
        best = min(_timed(lambda mm=mm, x=x, y=y: mm(x, y)) for _ in range(reps))
        out[name] = 2 * n ** 3 / best / 1e9
    out["best"] = max(out["numpy"], out["torch"])
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def round_robin(fns: dict, iters: int, block: int = 5, budget_s: float = 60.0) -> dict:
    """Median ms per call of each fn. Engines take turns in blocks of `block` calls (the first call of each block
    is not timed: it absorbs the previous engine's idle threads still spinning), over rounds until `iters` timed
    calls each, so that slow drift of the machine hits every engine alike."""
    times = {k: [] for k in fns}
    start = time.perf_counter()
    while min(len(v) for v in times.values()) < iters:
        for k, fn in fns.items():
            fn()
            for _ in range(block):
                times[k].append(_timed(fn))
        if time.perf_counter() - start > budget_s and min(len(v) for v in times.values()) >= block:
            break
    return {k: float(np.median(v) * 1000) for k, v in times.items()} | {"_iterations": min(map(len, times.values()))}


def make_dataset(root: Path, size: int, channels: int = 3) -> Path:
    """A small dataset at size x size (for export verification, INT8 calibration and accuracy): 3-channel
    noise with bright squares, or (channels=1) DAGM-like grayscale textures from the synthetic datatool."""
    from PIL import Image

    from datatools.convert import write_dataset
    from datatools.records import ParsedDataset, RawSample
    from datatools.synthetic.generator import SyntheticOptions, render

    rng = np.random.default_rng(0)
    raw = root / "raw"
    raw.mkdir(parents=True)
    samples = []
    for split, n in (("train", 12), ("test", 4)):
        for i in range(n):
            if channels == 1:
                img, mask = render(SyntheticOptions(size=size), 1 + i % 4, split, i, defective=i % 2 == 0)
                mask = (mask > 0).astype(np.uint8)
            else:
                img = rng.integers(60, 120, size=(size, size, 3)).astype(np.uint8)
                mask = np.zeros((size, size), np.uint8)
                if i % 2 == 0:
                    d = max(4, size // 8)
                    y, x = rng.integers(0, size - d, 2)
                    mask[y:y + d, x:x + d] = 1
                    img[mask == 1] = 230
            ip, mp = raw / f"{split}{i}.png", raw / f"{split}{i}_mask.png"
            Image.fromarray(img).save(ip)
            Image.fromarray(mask * 255).save(mp)
            samples.append(RawSample(id=f"{split}/{i}", image=ip, group="g", split=split, mask=mp))
    parsed = ParsedDataset(name="bench", source={"dataset": "bench"}, license="CC0", samples=samples)
    return write_dataset(parsed, root / "data", raw=raw, val_fraction=0.34, seed=0, workers=1, progress=False)


def bench_model(arch: str, encoder: str, dataset: Path, root: Path, size: int, iters: int, threads: int,
                sgemm: float) -> tuple[list[tuple], dict]:
    import onnxruntime as ort
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from asset.backends import load_backend
    from asset.export import export_model
    from tests.asset.backend_helpers import make_model_dir

    name = f"{'MobileNetV2' if encoder == 'mobilenet_v2' else encoder}-{arch.capitalize()}"
    log = lambda m: print(f"  {m}", file=sys.stderr)  # noqa: E731
    print(f"== {name} {size}x{size}: building and exporting", file=sys.stderr)
    m = make_model_dir(root / arch, dataset, arch, encoder, channels=3)
    t = time.perf_counter()
    onnx_e = export_model(m, "onnx", verify_images=4, log=log)
    int8_e = export_model(m, "onnx-int8", verify_images=4, calib_images=8, max_accuracy_drop=1.0, log=log)
    export_model(m, "openvino", verify_images=4, log=log)
    export_s = time.perf_counter() - t

    from asset import modeldir
    from asset.algorithm import Algorithm
    from asset.export import data as D

    card = modeldir.verify(m)
    alg = Algorithm.from_card(card)
    x, _ = alg.preprocess([D.load_image(D.split_items(card, "val")[0].path)])
    assert x.shape == (1, 3, size, size), x.shape

    torch.set_num_threads(threads)
    net = load_backend("pytorch", m, threads=threads, verify=False, card=card)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net._net(torch.from_numpy(x))
    flops = fc.get_total_flops()  # multiply-add = 2 FLOPs
    ours = load_backend("onnxruntime", m, threads=threads, verify=False, card=card)
    from asset.backends.ort import session_options

    # the baseline: the same file and session options, called directly (measures our wrapper's overhead)
    bare = ort.InferenceSession(str(m / onnx_e["file"]), session_options(threads), providers=["CPUExecutionProvider"])
    bare_in = bare.get_inputs()[0].name
    int8 = load_backend("onnxruntime", m, precision="int8", threads=threads, verify=False, card=card)
    ov = load_backend("openvino", m, threads=threads, verify=False, card=card)
    print(f"== {name}: timing ({iters} rounds)", file=sys.stderr)
    ms = round_robin({"torch": lambda: net.infer(x), "ort_ours": lambda: ours.infer(x),
                      "ort_bare": lambda: bare.run(None, {bare_in: x}), "ort_int8": lambda: int8.infer(x),
                      "openvino": lambda: ov.infer(x)}, iters)
    floor_ms = flops / (sgemm * 1e9) * 1000
    v = int8_e["verification"]
    acc = (f"accuracy {v['accuracy_change']:+.3f}, IoU {v['pixel_iou_change']:+.3f}, "
           f"decisions equal {v['decisions_equal']}/{v['images']}")
    rows = [
        (f"{name}: our ONNX Runtime backend vs bare InferenceSession.run (overhead, goal <= 1.05x)",
         ms["ort_ours"], ms["ort_bare"], ms["ort_ours"] / ms["ort_bare"]),
        (f"{name}: ONNX Runtime vs PyTorch eager, CPU (speed-up, goal >= 2x)", ms["ort_ours"], ms["torch"],
         ms["torch"] / ms["ort_ours"]),
        (f"{name}: ONNX Runtime INT8 vs FP32 (speed-up, goal >= 1.5x; {acc} on val)", ms["ort_int8"],
         ms["ort_ours"], ms["ort_ours"] / ms["ort_int8"]),
        (f"{name}: OpenVINO vs ONNX Runtime FP32 (speed-up)", ms["openvino"], ms["ort_ours"],
         ms["ort_ours"] / ms["openvino"]),
    ]
    for key, label in (("torch", "PyTorch eager"), ("ort_ours", "ONNX Runtime FP32"), ("openvino", "OpenVINO FP32"),
                       ("ort_int8", "ONNX Runtime INT8")):
        rows.append((f"{name}: {label} vs FLOP floor ({flops / 1e9:.1f} GFLOP / {sgemm:.0f} GFLOP/s sgemm)",
                     ms[key], floor_ms, ms[key] / floor_ms))
    for b in (net, ours, int8, ov):
        b.close()
    detail = {"model": name, "size": size, "gflop": flops / 1e9, "floor_ms": floor_ms, "ms": ms,
              "export_seconds": round(export_s, 1), "int8": {"verification": v, "export_speed": int8_e["speed"]},
              "onnx_verification": onnx_e["verification"]}
    return rows, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20, help="timed calls per engine (in blocks of 5)")
    ap.add_argument("--models", default="unet,linknet", help="architectures, MobileNetV2 encoder")
    ap.add_argument("--out", type=Path, default=Path("out/bench/inference.json"))
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from asset.backends import default_threads
    from asset.benchmark import machine_info

    t0 = time.perf_counter()
    threads = default_threads()
    import torch

    torch.set_num_threads(threads)
    sgemm = sgemm_gflops()
    print(f"sgemm: numpy {sgemm['numpy']:.0f}, torch {sgemm['torch']:.0f} GFLOP/s ({threads} threads)",
          file=sys.stderr)
    rows, details = [], []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        dataset = make_dataset(Path(tmp) / "ds", args.size)
        for arch in args.models.split(","):
            r, d = bench_model(arch, "mobilenet_v2", dataset, Path(tmp), args.size, args.iters, threads,
                               sgemm["best"])
            rows += r
            details.append(d)
    for what, ours, base, ratio in rows:
        print(f"| {what} | {ours:.1f} ms | {base:.1f} ms | {ratio:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), "threads": threads, "sgemm_gflops": sgemm, "batch": 1,
           "rows": [{"what": w, "ours_ms": o, "baseline_ms": b, "ratio": r} for w, o, b, r in rows],
           "models": details, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"wrote {args.out} ({doc['seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
