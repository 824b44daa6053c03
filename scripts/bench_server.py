"""The HTTP server beside the bare backend, in one run, same model and same image (2-core machine).

- concurrency 1: server p50 latency (decode, batching, JSON and HTTP included) / bare backend p50 on the
  preprocessed tensor (goal <= 1.25x);
- concurrency 8: server throughput / the bare backend's best batched throughput (goal >= 0.9x), zero errors,
  p99 reported;
- memory: server RSS after 1,000 requests / after 100 (goal <= 1.10x).

    python scripts/bench_server.py --size 256 --out out/bench/server.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_inference import make_dataset  # noqa: E402
from loadtest import free_port, run_level, wait_ready  # noqa: E402


def median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image side (default 256)")
    parser.add_argument("--arch", default="linknet")
    parser.add_argument("--encoder", default="mobilenet_v2")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from asset.export import export_model
    from asset.predictor import Predictor
    from tests.asset.backend_helpers import make_model_dir

    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    dataset = make_dataset(root, args.size)
    model = make_model_dir(root / "model", dataset, args.arch, args.encoder, channels=3)
    export_model(model, "onnx", verify_images=4, log=lambda m: None)
    rng = np.random.default_rng(1)
    image = rng.integers(60, 120, size=(args.size, args.size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    payload = buf.getvalue()

    # the bare backend on the preprocessed tensor
    with Predictor(model, backend="onnxruntime", threads=args.threads) as predictor:
        x, _ = predictor.algorithm.preprocess([image])
        bare_ms = median_ms(lambda: predictor.backend.infer(x), 40)
        batched = {}
        for b in (1, 2, 4, 8):
            xb = np.repeat(x, b, axis=0)
            batched[b] = b / (median_ms(lambda xb=xb: predictor.backend.infer(xb), 12) / 1000)
    best_batch = max(batched, key=batched.get)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "asset.cli", "serve", "--model", str(model), "--port", str(port),
                               "--threads", str(args.threads), "--max-batch", "8", "--max-wait-ms", "2"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, server)
        proc = psutil.Process(server.pid)
        c1 = asyncio.run(run_level(url, payload, 1, 60, 80))
        c8 = asyncio.run(run_level(url, payload, 8, 60, 320))
        asyncio.run(run_level(url, payload, 8, 120, 100))
        rss_100 = proc.memory_info().rss
        asyncio.run(run_level(url, payload, 8, 300, 900))
        rss_1000 = proc.memory_info().rss
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)

    result = {
        "model": f"{args.encoder}-{args.arch}", "size": args.size, "threads": args.threads,
        "bare_p50_ms": bare_ms, "bare_batched_images_per_s": batched, "bare_best_batch": best_batch,
        "c1": c1, "c8": c8, "rss_after_100_mb": rss_100 / 2**20, "rss_after_1000_mb": rss_1000 / 2**20,
        "ratios": {"c1_p50": c1["p50_ms"] / bare_ms, "c8_throughput": c8["throughput"] / batched[best_batch],
                   "rss": rss_1000 / rss_100},
    }
    r = result["ratios"]
    name = f"MobileNetV2-{args.arch.capitalize()} {args.size}x{args.size}"
    print(f"| server, {name}, concurrency 1: p50 latency (HTTP, decode, JSON included) vs bare backend "
          f"| {c1['p50_ms']:.1f} ms | {bare_ms:.1f} ms | {r['c1_p50']:.2f}x (goal <= 1.25x) |")
    print(f"| server, concurrency 8: throughput ({c8['errors']} errors, p99 {c8['p99_ms']:.0f} ms) vs bare best batched "
          f"(batch {best_batch}) | {c8['throughput']:.1f} img/s | {batched[best_batch]:.1f} img/s "
          f"| {r['c8_throughput']:.2f}x (goal >= 0.9x) |")
    print(f"| server RSS after 1,000 requests vs after 100 | {rss_1000 / 2**20:.0f} MB | {rss_100 / 2**20:.0f} MB "
          f"| {r['rss']:.3f}x (goal <= 1.10x) |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
