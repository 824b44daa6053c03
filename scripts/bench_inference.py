#!/usr/bin/env python3
"""Inference speed: the project's backends against their baselines, on one model and input, in one run.

For MobileNetV2-Unet and MobileNetV2-Linknet (encoder_weights=None, 3 channels; trained by `asset train` for a few
epochs on 128x128 images whose square defects cover the same share of the image, so that INT8 has decisions to
keep) at 512x512, batch 1, each exported through `asset export` with its default options, the INT8 accuracy gate
included (onnx, onnx-int8, openvino; judged on the 512x512 set's val+train images, 24 of them defective), into a
temporary model directory:
- our ONNX Runtime backend vs a bare `onnxruntime.InferenceSession.run` on the same preprocessed tensor (goal <= 1.05x);
- ONNX Runtime vs PyTorch eager on the CPU (goal >= 2x);
- ONNX Runtime INT8 (static QDQ, per-channel) vs FP32 (goal >= 1.5x), with the accuracy / IoU change;
- OpenVINO vs ONNX Runtime;
- every backend against its FLOP floor, the time the arithmetic alone needs at the cores' peak rate (scripts/flops.py):
  FLOPs of the network that runs, at the timed input (torch.utils.flop_counter on the PyTorch module, cross-checked
  by a count from the ONNX graph; they must agree within 1%) / the peak of this machine (cores x fp32 FLOP or int8
  MAC per cycle of its microarchitecture x measured clock; the row names where the per-cycle width came from).
  FP32 rows use the fp32 peak, the INT8 row the int8 peak. A ratio >= 1 is how many times slower than that physical
  floor a backend runs; < 1 is impossible. Beside it, the floor at the rate torch's fp32 GEMM reached in this run
  (a real kernel on these cores) and the ratio to that.
--quick: the same code end to end at 64x64 with one training epoch and a few timed calls (the smoke test of
`make bench-smoke`; its figures mean nothing).
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
sys.path.insert(0, str(REPO / "scripts"))


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


# The loss each model trains with, so that INT8's gate has defects to keep. With bce_dice, MobileNetV2-Linknet's
# pixels stayed below 0.5 after 25 and 60 epochs (it found 0 of 24 defects; IoU 0); with the IoU loss it found all
# of them (2026-12-07, pixel IoU 0.81 on the 512x512 set's train images).
FIT_LOSS = {"unet": "bce_dice", "linknet": "jaccard"}


def make_dataset(root: Path, size: int, channels: int = 3, defect: int = 32, n_train: int = 12, n_test: int = 4
                 ) -> Path:
    """A small dataset at size x size (scripts/bench_models.py)."""
    from bench_models import make_dataset as make

    return make(root, size, channels, defect, n_train, n_test)


def bench_model(arch: str, encoder: str, dataset: Path, fit_dataset: Path, root: Path, size: int, iters: int,
                threads: int, peak: dict, epochs: int, budget_s: float = 60.0) -> tuple[list[tuple], dict]:
    import onnxruntime as ort
    import torch
    from bench_models import train_model

    from asset.backends import load_backend
    from asset.export import ExportError, export_model
    from scripts.flops import onnx_flops, peak_label, torch_flops

    name = f"{'MobileNetV2' if encoder == 'mobilenet_v2' else encoder}-{arch.capitalize()}"
    log = lambda m: print(f"  {m}", file=sys.stderr)  # noqa: E731
    print(f"== {name} {size}x{size}: asset train ({epochs} epochs), asset export", file=sys.stderr)
    t = time.perf_counter()
    m = train_model(root / arch, fit_dataset, arch, encoder, epochs=epochs, loss=FIT_LOSS.get(arch, "bce_dice"), log=log)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    # exported as users do, verified and calibrated on the timed size's dataset (the model trained on small images)
    onnx_e = export_model(m, "onnx", data=dataset, verify_images=4, log=log)
    try:
        int8_e = export_model(m, "onnx-int8", data=dataset, log=log)  # the users' gate, with its defaults
    except ExportError as exc:  # reported, not forced through: an export users would not get is not timed
        int8_e = {"refused": str(exc)}
    export_model(m, "openvino", data=dataset, verify_images=4, log=log)
    export_s = time.perf_counter() - t

    from asset import modeldir
    from asset.algorithm import Algorithm
    from asset.export import data as D

    card = modeldir.verify(m)
    alg = Algorithm.from_card(card)
    x, _ = alg.preprocess([D.load_image(D.split_items(card, "val", data=dataset)[0].path)])
    assert x.shape == (1, 3, size, size), x.shape

    torch.set_num_threads(threads)
    net = load_backend("pytorch", m, threads=threads, verify=False, card=card)
    flops = torch_flops(net._net, torch.from_numpy(x))  # the module PyTorch runs, at the timed input
    graph = onnx_flops(m / onnx_e["file"], x.shape)  # the file ONNX Runtime and OpenVINO run
    if abs(graph["flops"] - flops) > 0.01 * flops:
        raise SystemExit(f"{name}: FLOP counts disagree: torch {flops / 1e9:.3f} G, ONNX graph "
                         f"{graph['flops'] / 1e9:.3f} G")
    engines = {"torch": lambda: net.infer(x)}
    ours = load_backend("onnxruntime", m, threads=threads, verify=False, card=card)
    engines["ort_ours"] = lambda: ours.infer(x)
    from asset.backends.ort import session_options

    # the baseline: the same file and session options, called directly (measures our wrapper's overhead)
    bare = ort.InferenceSession(str(m / onnx_e["file"]), session_options(threads), providers=["CPUExecutionProvider"])
    bare_in = bare.get_inputs()[0].name
    engines["ort_bare"] = lambda: bare.run(None, {bare_in: x})
    int8 = None
    if "refused" not in int8_e:
        int8 = load_backend("onnxruntime", m, precision="int8", threads=threads, verify=False, card=card)
        engines["ort_int8"] = lambda: int8.infer(x)
        int8_graph = onnx_flops(m / int8_e["file"], x.shape)
        if int8_graph["macs"] != graph["macs"]:
            raise SystemExit(f"{name}: the INT8 graph has {int8_graph['macs']} MACs, the fp32 one {graph['macs']}")
    ov = load_backend("openvino", m, threads=threads, verify=False, card=card)
    engines["openvino"] = lambda: ov.infer(x)
    print(f"== {name}: timing ({iters} rounds)", file=sys.stderr)
    ms = round_robin(engines, iters, block=min(5, iters), budget_s=budget_s)
    fp32_floor = flops / (peak["fp32"]["gflops"] * 1e9) * 1000
    int8_floor = flops / (peak["int8"]["gops"] * 1e9) * 1000  # a MAC is 2 FLOPs and 2 int8 OPs alike
    gemm_floor = flops / (peak["gemm_gflops"] * 1e9) * 1000 if peak.get("gemm_gflops") else None
    rows = [
        (f"{name}: our ONNX Runtime backend vs bare InferenceSession.run (overhead, goal <= 1.05x)",
         ms["ort_ours"], ms["ort_bare"], ms["ort_ours"] / ms["ort_bare"]),
        (f"{name}: ONNX Runtime vs PyTorch eager, CPU (speed-up, goal >= 2x)", ms["ort_ours"], ms["torch"],
         ms["torch"] / ms["ort_ours"]),
    ]
    if int8 is not None:
        v, q = int8_e["verification"], int8_e.get("quantisation", {})
        ap = "n/a" if v.get("ap_change") is None else f"{v['ap_change']:+.3f}"
        d = v.get("defects", {})
        acc = (f"{q.get('scheme', '?')} scheme; AP {ap}, accuracy {v['accuracy_change']:+.3f}, IoU "
               f"{v['pixel_iou_change']:+.3f}, defects found {d.get('found_by_export')}/{d.get('found_by_reference')}"
               f", decisions equal {v['decisions_equal']}/{v['images']} on {v['inputs']}")
        rows.append((f"{name}: ONNX Runtime INT8 vs FP32 (speed-up, goal >= 1.5x; {acc}; default gate)",
                     ms["ort_int8"], ms["ort_ours"], ms["ort_ours"] / ms["ort_int8"]))
    else:
        rows.append((f"{name}: ONNX Runtime INT8: export refused by the default accuracy gate "
                     f"({int8_e['refused'][:300]})", None, None, None))
    rows.append((f"{name}: OpenVINO vs ONNX Runtime FP32 (speed-up)", ms["openvino"], ms["ort_ours"],
                 ms["ort_ours"] / ms["openvino"]))
    gflop = f"{flops / 1e9:.1f} GFLOP, ONNX graph {graph['flops'] / 1e9:.1f}"
    for key, label in (("torch", "PyTorch eager FP32"), ("ort_ours", "ONNX Runtime FP32"),
                       ("openvino", "OpenVINO FP32"), ("ort_int8", "ONNX Runtime INT8")):
        if key not in ms:
            continue
        if key == "ort_int8":
            floor, rate = int8_floor, peak_label(peak, "int8")
        else:
            floor, rate = fp32_floor, peak_label(peak, "fp32")
        gemm = ""
        if gemm_floor is not None:
            gemm = (f"; at the {peak['gemm_gflops']:.0f} GFLOP/s torch's fp32 GEMM reached here: floor "
                    f"{gemm_floor:.1f} ms, {ms[key] / gemm_floor:.2f}x")
        rows.append((f"{name}: {label} vs FLOP floor ({gflop} / {rate}{gemm}; ratio >= 1: times slower than the "
                     f"floor)", ms[key], floor, ms[key] / floor))
    for b in (net, ours, int8, ov):
        if b is not None:
            b.close()
    detail = {"model": name, "size": size, "input_shape": list(x.shape), "gflop": flops / 1e9,
              "onnx_graph": graph, "floor_ms": {"fp32": fp32_floor, "int8": int8_floor, "fp32_gemm": gemm_floor},
              "ms": ms, "train_seconds": round(train_s, 1), "export_seconds": round(export_s, 1),
              "int8": int8_e if "refused" in int8_e else
              {"verification": int8_e["verification"], "export_speed": int8_e["speed"],
               "quantisation": int8_e.get("quantisation")},
              "onnx_verification": onnx_e["verification"]}
    return rows, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20, help="timed calls per engine (in blocks of 5)")
    ap.add_argument("--models", default="unet,linknet", help="architectures, MobileNetV2 encoder")
    ap.add_argument("--epochs", type=int, default=25, help="`asset train` epochs of each model on 128x128 images")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64x64, 1 epoch, 2 timed calls (figures mean "
                    "nothing; checks the script end to end)")
    ap.add_argument("--out", type=Path, default=Path("out/bench/inference.json"))
    args = ap.parse_args()
    if args.quick:
        args.size, args.iters, args.epochs = 64, 2, 1
    import warnings

    warnings.filterwarnings("ignore")
    from asset.backends import default_threads
    from asset.benchmark import machine_info

    t0 = time.perf_counter()
    threads = default_threads()
    import torch

    torch.set_num_threads(threads)
    from scripts.flops import gemm_gflops, peak_rates, stated_clock_ghz

    quick = {"n": 512, "seconds": 0.2} if args.quick else {}
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    peak = peak_rates(threads, cpuinfo, clock_ghz=stated_clock_ghz(),
                      gemm_gflops=gemm_gflops(threads, **quick))
    print(f"peak: {threads} cores x {peak['fp32']['flop_per_cycle_core']} fp32 FLOP/cycle ({peak['fp32']['isa']}: "
          f"{peak['fp32']['how']}; {peak['fp32']['source']}) "
          f"x {peak['clock_ghz']} GHz ({peak['clock_source']}; clocks {peak['clocks_ghz']}) = "
          f"{peak['fp32']['gflops']:.0f} GFLOP/s; int8 {peak['int8']['macs_per_cycle_core']} MAC/cycle "
          f"({peak['int8']['how']}) = {peak['int8']['gops']:.0f} GOP/s; torch fp32 GEMM reached "
          f"{peak['gemm_gflops']:.0f} GFLOP/s", file=sys.stderr)
    rows, details = [], []
    fit_size = 64 if args.quick else 128
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        # the timed size's set: exports are verified (and INT8 judged: 24 defective val+train images) and calibrated
        # on it; the training set: small images whose defects cover the same share of the image
        dataset = make_dataset(Path(tmp) / "ds", args.size, n_train=12 if args.quick else 48)
        fit_dataset = make_dataset(Path(tmp) / "fit", fit_size, defect=max(2, 32 * fit_size // args.size),
                                   n_train=8 if args.quick else 24)
        for arch in args.models.split(","):
            r, d = bench_model(arch, "mobilenet_v2", dataset, fit_dataset, Path(tmp), args.size, args.iters,
                               threads, peak, args.epochs, budget_s=5.0 if args.quick else 60.0)
            rows += r
            details.append(d)
    for what, ours, base, ratio in rows:
        what = what.replace("|", "\\|")  # a refusal quotes |logit diff|: escaped, the table keeps its columns
        print(f"| {what} | - | - | - |" if ours is None else f"| {what} | {ours:.1f} ms | {base:.1f} ms | {ratio:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), "threads": threads, "peak": peak, "batch": 1,
           "rows": [{"what": w, "ours_ms": o, "baseline_ms": b, "ratio": r} for w, o, b, r in rows],
           "models": details, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"wrote {args.out} ({doc['seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
