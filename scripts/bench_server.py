"""The HTTP server beside the bare backend, in one run, same model and same image (this machine's cores).

The bare backend is the Predictor called in-process on the decoded image (the engine plus the shared pre-
and post-processing every caller needs; no HTTP, no decoding, no JSON). The tensor-only engine time is
recorded too. For each workload:

- concurrency 1: server p50 latency (HTTP, decode, batching and JSON included) / bare p50 (goal <= 1.25x);
- concurrency 8: server throughput / the bare backend's best batched throughput (goal >= 0.9x), zero
  errors, p99 reported. The server's --max-batch is that best batch size (what Triton's model analyzer
  would pick: past it, a CPU engine gets slower per image);
- memory (first workload): server RSS after 1,000 requests / after 100 (goal <= 1.10x).

Workloads: `dagm512` is the shape of the project's main dataset (512x512 grayscale DAGM-like texture,
one input channel); `rgb256` is a 256x256 3-channel noise image, where the fixed per-request cost of HTTP
and PNG decoding weighs most against a short inference.

    python scripts/bench_server.py --workloads dagm512,rgb256 --out out/bench/server.json
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

from bench_models import make_dataset, train_model  # noqa: E402
from loadtest import free_port, run_level, wait_ready  # noqa: E402

WORKLOADS = {"dagm512": (512, 1), "rgb256": (256, 3)}  # name -> (image side, channels)


def median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def request_image(size: int, channels: int) -> np.ndarray:
    """The image every measurement of a workload uses: a defective DAGM-like texture, or RGB noise."""
    if channels == 1:
        from datatools.synthetic.generator import SyntheticOptions, render

        return render(SyntheticOptions(size=size), 2, "test", 7, defective=True)[0]
    return np.random.default_rng(1).integers(60, 120, size=(size, size, 3)).astype(np.uint8)


def start_server(model: Path, threads: int, max_batch: int, log_file: Path) -> tuple[subprocess.Popen, str]:
    """`asset serve` on a free loopback port, its output into `log_file` (shown when it fails to start)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_file, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "asset.cli", "serve", "--model", str(model), "--port",
                                   str(port), "--threads", str(threads), "--max-batch", str(max_batch),
                                   "--max-wait-ms", "2"],
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server, log_file=log_file)
    except SystemExit:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
        raise
    return server, url


async def interleaved_c1(url: str, payload: bytes, predictor, image: np.ndarray, pairs: int) -> dict:
    """Concurrency 1, one bare call and one request after the other, `pairs` times: both sides see the
    same moment of a shared machine. Returns the p50/p99 of each side."""
    import aiohttp

    bare, served, errors = [], [], 0
    headers = {"content-type": "image/png"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for _ in range(pairs + 3):  # the first three pairs warm up both sides
            start = time.perf_counter()
            predictor.predict([image])
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            async with session.post(f"{url}/predict", data=payload, headers=headers) as response:
                await response.read()
                errors += response.status != 200
            served.append(time.perf_counter() - start)
    bare_ms, served_ms = np.array(bare[3:]) * 1000, np.array(served[3:]) * 1000
    return {"pairs": pairs, "errors": errors, "bare_p50_ms": float(np.median(bare_ms)),
            "p50_ms": float(np.median(served_ms)), "p99_ms": float(np.percentile(served_ms, 99))}


def run_workload(name: str, root: Path, arch: str, encoder: str, threads: int, rounds: int, memory: bool,
                 quick: bool = False) -> dict:
    """Bare and server measurements alternate while the other side sits idle, so a slow spell of a shared
    machine lands on both: at concurrency 1 call by call, at concurrency 8 in `rounds` short bursts each
    (the ratio is taken within each burst pair and the median pair reported). The model is trained by
    `asset train` (one epoch on the workload's images: its speed, not its accuracy, is measured) and exported by
    `asset export`, as users make theirs. `quick`: the workload at 64x64 with a few requests (smoke test)."""
    from asset.export import export_model
    from asset.predictor import Predictor

    size, channels = WORKLOADS[name]
    if quick:
        size = 64
    dataset = make_dataset(root / name, size, channels, n_train=8, n_test=2)
    model = train_model(root / name / "model", dataset, arch, encoder, epochs=1,
                        log=lambda m: print(f"  {m}", file=sys.stderr))
    export_model(model, "onnx", verify_images=4, log=lambda m: None)
    image = request_image(size, channels)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    payload = buf.getvalue()
    per_burst = 16 if quick else 256 if size <= 256 else 64  # images per throughput burst: a couple of seconds each

    with Predictor(model, backend="onnxruntime", threads=threads, batch_size=8) as predictor:
        x, _ = predictor.algorithm.preprocess([image])
        tensor_ms = median_ms(lambda: predictor.backend.infer(x), per_burst // 4)
        batched = {b: b / (median_ms(lambda b=b: predictor.predict([image] * b), max(6, per_burst // b)) / 1000)
                   for b in (1, 2, 4, 8)}
        best = max(batched, key=batched.get)
        server, url = start_server(model, threads, best, root / name / "server.log")
        try:
            asyncio.run(run_level(url, payload, 8, 30, 8 if quick else 40))  # connections, caches, allocator settle
            c1 = asyncio.run(interleaved_c1(url, payload, predictor, image, per_burst // 2))
            bursts = []
            for _ in range(rounds):
                start = time.perf_counter()
                for _ in range(per_burst // best):
                    predictor.predict([image] * best)
                bare_ips = (per_burst // best) * best / (time.perf_counter() - start)
                c8 = asyncio.run(run_level(url, payload, 8, 90, per_burst))
                bursts.append({"bare_images_per_s": bare_ips, "c8": c8, "ratio": c8["throughput"] / bare_ips})
            out: dict = {}
            if memory:
                proc = psutil.Process(server.pid)
                asyncio.run(run_level(url, payload, 8, 120, 10 if quick else 100))
                out["rss_after_100_mb"] = proc.memory_info().rss / 2**20
                asyncio.run(run_level(url, payload, 8, 300, 20 if quick else 900))
                out["rss_after_1000_mb"] = proc.memory_info().rss / 2**20
        finally:
            server.terminate()
            server.wait(timeout=30)

    median_burst = sorted(bursts, key=lambda r: r["ratio"])[len(bursts) // 2]
    c8 = {**median_burst["c8"], "errors": sum(b["c8"]["errors"] for b in bursts)}  # errors: every burst counts
    ratios = {"c1_p50": c1["p50_ms"] / c1["bare_p50_ms"], "c8_throughput": median_burst["ratio"]}
    if memory:
        ratios["rss"] = out["rss_after_1000_mb"] / out["rss_after_100_mb"]
    return {"workload": name, "size": size, "channels": channels, "png_bytes": len(payload),
            "model": f"{encoder}-{arch}", "threads": threads, "tensor_p50_ms": tensor_ms,
            "bare_batched_images_per_s": batched, "best_batch": best, "bare_p50_ms": c1["bare_p50_ms"], "c1": c1,
            "bursts": bursts, "bare_best_images_per_s": median_burst["bare_images_per_s"], "c8": c8, **out,
            "ratios": ratios}


def table_rows(r: dict) -> list[str]:
    c1, c8, ratio, best = r["c1"], r["c8"], r["ratios"], r["best_batch"]
    name = f"{r['size']}x{r['size']}x{r['channels']} ({r['workload']}, {r['png_bytes'] // 1024} KB PNG)"
    rows = [
        f"| server, {name}, concurrency 1: p50 latency (HTTP, decode, JSON included) vs bare Predictor "
        f"(engine alone: {r['tensor_p50_ms']:.1f} ms) | {c1['p50_ms']:.1f} ms | {r['bare_p50_ms']:.1f} ms "
        f"| {ratio['c1_p50']:.2f}x (goal <= 1.25x) |",
        f"| server, {name}, concurrency 8: throughput ({c8['errors']} errors, p99 {c8['p99_ms']:.0f} ms, max batch "
        f"{best}) vs bare best batched | {c8['throughput']:.1f} img/s | {r['bare_best_images_per_s']:.1f} img/s "
        f"| {ratio['c8_throughput']:.2f}x (goal >= 0.9x) |",
    ]
    if "rss" in ratio:
        rows.append(f"| server RSS after 1,000 requests vs after 100 ({r['workload']}) | {r['rss_after_1000_mb']:.0f} MB "
                    f"| {r['rss_after_100_mb']:.0f} MB | {ratio['rss']:.3f}x (goal <= 1.10x) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="dagm512,rgb256",
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: both)")
    parser.add_argument("--arch", default="linknet")
    parser.add_argument("--encoder", default="mobilenet_v2")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=5, help="alternating bare/server bursts at concurrency 8 (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64x64 images, a few requests, 1 round (its "
                        "figures mean nothing; checks the script end to end)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown or not names:
        parser.error(f"unknown workload(s) {unknown}: choose from {', '.join(WORKLOADS)}")

    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    try:
        results = [run_workload(name, root, args.arch, args.encoder, args.threads, args.rounds, memory=i == 0,
                                quick=args.quick) for i, name in enumerate(names)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for r in results:
        print("\n".join(table_rows(r)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"workloads": results}, indent=2) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
