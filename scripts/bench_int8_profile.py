#!/usr/bin/env python3
"""Where INT8 time goes under ONNX Runtime: which ops stay FP32, how many Q/DQ nodes survive the fusions, what each
op type costs, for the FP32 export and each INT8 scheme of one model directory.

    python scripts/bench_int8_profile.py --model MODEL_DIR [--schemes asymmetric,symmetric-uint8] [--size 512]

For each scheme the model directory is copied and exported with `asset export --format onnx-int8 --scheme S` (the
gate on, as users export). Each file is then opened by ONNX Runtime with every graph optimisation (the graph it
really runs is saved and its node types counted: QLinearConv = fused INT8, DequantizeLinear / QuantizeLinear = Q/DQ
left around ops without an INT8 kernel, Relu / Clip = activations not folded), run on one preprocessed image of the
model's dataset resized to --size, timed in turns (medians), and profiled (ONNX Runtime's profiler: kernel time per
op type). Prints a Markdown table per file and writes JSON to --out. The findings behind the default scheme are in
asset/export/onnx_int8.py's doc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def session(path: Path, threads: int, profile_prefix: str | None = None, optimized: Path | None = None):
    import onnxruntime as ort

    from asset.backends.ort import session_options

    so = session_options(threads)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def node_types(path: Path) -> dict:
    import onnx

    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def profile(path: Path, x: np.ndarray, threads: int, runs: int, work: Path) -> dict:
    """Kernel ms per run by op type (ONNX Runtime's profiler), over `runs` runs."""
    sess = session(path, threads, profile_prefix=str(work / f"profile-{path.stem}"))
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    for _ in range(runs):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    ms: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            ms[op] += e["dur"] / 1000 / (runs + 1)
            count[op] += 1
    return {op: {"ms": round(v, 3), "nodes": count[op] // (runs + 1)} for op, v in sorted(ms.items(),
                                                                                         key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a model directory with an ONNX export")
    ap.add_argument("--data", help="dataset for the INT8 exports (default: the card's)")
    ap.add_argument("--schemes", default="asymmetric,symmetric-uint8")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=10, help="profiled runs per file")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (each file in turn, 3 calls per round)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("out/bench/int8-profile.json"))
    args = ap.parse_args()

    import cv2

    from asset import modeldir
    from asset.algorithm import Algorithm, load_image
    from asset.backends import default_threads
    from asset.export import data as D
    from asset.export import export_model

    threads = args.threads or default_threads()
    card = modeldir.verify(args.model)
    alg = Algorithm.from_card(card)
    image = load_image(D.split_items(card, "val", args.data)[0].path)
    image = cv2.resize(image, (args.size, args.size), interpolation=cv2.INTER_AREA)
    x = alg.preprocess([image])[0]
    work = Path(tempfile.mkdtemp(prefix="int8-profile-"))
    try:
        files = {"fp32": args.model / card["exports"]["onnx"]["file"]}
        schemes = {}
        for scheme in [s for s in args.schemes.split(",") if s]:
            m = work / scheme
            shutil.copytree(args.model, m)
            e = export_model(m, "onnx-int8", data=args.data, scheme=scheme, log=lambda s: print(f"  {s}",
                                                                                                 file=sys.stderr))
            files[scheme] = m / e["file"]
            schemes[scheme] = {"quantisation": e["quantisation"], "verification": e["verification"]}
        result = {}
        for key, path in files.items():
            optimized = work / f"optimized-{key}.onnx"
            session(path, threads, optimized=optimized)
            result[key] = {"file": str(path), "nodes_as_run": node_types(optimized)}
        sessions = {k: session(p, threads) for k, p in files.items()}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for k, s in sessions.items():
                name = s.get_inputs()[0].name
                s.run(None, {name: x})
                for _ in range(3):
                    t = time.perf_counter()
                    s.run(None, {name: x})
                    times[k].append(time.perf_counter() - t)
        for k in files:
            result[k]["median_ms"] = float(np.median(times[k]) * 1000)
            result[k]["speedup_vs_fp32"] = float(np.median(times["fp32"]) / np.median(times[k]))
            result[k]["profile"] = profile(files[k], x, threads, args.runs, work)
            result[k].update(schemes.get(k, {}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for k, r in result.items():
        n = r["nodes_as_run"]
        print(f"\n### {k}: {r['median_ms']:.1f} ms ({r['speedup_vs_fp32']:.2f}x of fp32), as run: "
              + ", ".join(f"{op} {c}" for op, c in sorted(n.items(), key=lambda kv: -kv[1])))
        print("\n| op type | nodes | kernel ms per run |\n|---|---|---|")
        for op, v in r["profile"].items():
            print(f"| {op} | {v['nodes']} | {v['ms']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "threads": threads, "files": result}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
