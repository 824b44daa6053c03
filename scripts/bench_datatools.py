"""Conversion throughput of `datatool convert` beside a decode+re-encode baseline, one run.

The baseline does the least any converter must: decode every file the conversion reads (images
and masks) and encode it again with the same library (Pillow, PNG), on the same number of worker
processes. Our conversion decodes, checks, RLE-encodes masks, hashes and copies image bytes.
Ratio = our images/s / baseline images/s (goal: >= 0.7).

    python scripts/bench_datatools.py --images 2000 --size 512 --out out/bench/datatools.json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from datatools.convert import default_workers, write_dataset
from datatools.dagm.parser import parse_dagm
from datatools.synthetic.generator import generate_dagm_layout


def _reencode(path: str) -> int:
    with Image.open(path) as img:
        img.load()
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return len(buf.getvalue())


def baseline(files: list[str], workers: int) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(_reencode, files, chunksize=16):
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="total images (default 2000)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs for each side (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-datatools-"))
    try:
        per_class = args.images // args.classes
        train, test = per_class * 2 // 3, per_class - per_class * 2 // 3
        raw = generate_dagm_layout(work / "raw", classes=args.classes, size=args.size,
                                   train_per_class=train, test_per_class=test, seed=0, workers=args.workers)
        parsed = parse_dagm(raw)
        n = len(parsed.samples)
        files = [str(s.image) for s in parsed.samples] + [str(s.mask) for s in parsed.samples if s.mask]

        base_s = min(baseline(files, args.workers) for _ in range(args.repeats))
        ours_s = float("inf")
        for i in range(args.repeats):
            start = time.perf_counter()
            parsed = parse_dagm(raw)  # parsing the layout is part of the conversion
            write_dataset(parsed, work / f"out{i}", workers=args.workers, progress=False)
            ours_s = min(ours_s, time.perf_counter() - start)

        result = {
            "images": n, "mask_files": len(files) - n, "size": args.size, "workers": args.workers,
            "baseline_images_per_s": n / base_s, "convert_images_per_s": n / ours_s,
            "ratio": (n / ours_s) / (n / base_s), "goal": 0.7,
        }
        print(f"| datatool convert, DAGM layout, {n} images {args.size}x{args.size}, {args.workers} workers "
              f"| {result['convert_images_per_s']:.0f} img/s "
              f"| {result['baseline_images_per_s']:.0f} img/s (Pillow decode + PNG re-encode) "
              f"| {result['ratio']:.2f}x (goal >= 0.7x) |")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
