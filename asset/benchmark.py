"""`asset benchmark`: every backend on this machine, one table (Ultralytics style), JSON beside the Markdown.

For each backend x precision x batch: status (ok / exported but wrong / failed, with the reason), file size,
accuracy and pixel IoU on a dataset split (read, batched and scored by asset.scoring, as `asset evaluate --backend`
does: the same figures), latency p50/p90/p99 in ms per image
(model call on a preprocessed batch, after warm-up) and throughput. "Exported but wrong": the backend runs but its
predictions disagree with the reference (PyTorch, else ONNX Runtime fp32): fp32 needs identical decisions and
>= 99.9% equal mask pixels, reduced precision an accuracy / IoU drop <= max_accuracy_drop.
The JSON also records the machine (CPU, cores, GPU, library versions) so runs from several devices can be merged.
Needs no torch unless the pytorch backend is benchmarked.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asset import files, modeldir, scoring
from asset.algorithm import Algorithm, load_image
from asset.backends import BACKENDS, BackendError, backend_status, canonical_name, get_spec, load_backend

SCHEMA = "asset-benchmark/1"
DEFAULT_ORDER = [("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
                 ("openvino", "int8"), ("tensorrt", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8")]


@dataclass
class Row:
    backend: str
    precision: str
    batch: int
    status: str = "ok"  # ok | exported but wrong | failed | unavailable
    reason: str = ""
    file: str | None = None
    size_mb: float | None = None
    accuracy: float | None = None
    pixel_iou: float | None = None
    decisions_equal_reference: str | None = None
    mask_agreement: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    iterations: int = 0
    extra: dict = field(default_factory=dict)


def parse_targets(text: str | list[str] | None) -> list[tuple[str, str]] | None:
    """'onnxruntime,onnxruntime:int8,pytorch' -> [(name, precision)], validated against the registry."""
    if text is None:
        return None
    parts = [p.strip() for p in (",".join(text) if isinstance(text, list) else text).split(",") if p.strip()]
    out = []
    for p in parts:
        name, _, precision = p.partition(":")
        spec = get_spec(name)
        name = canonical_name(name)
        if precision:
            if precision not in spec.precisions:
                raise BackendError(f"backend {name!r} runs {', '.join(spec.precisions)}, not {precision!r}")
            out.append((name, precision))
        else:
            out.append((name, "fp16" if name == "tensorrt" else "fp32"))
    return out


def parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BackendError(f"--size must look like 512x512 (H x W), got {text!r}") from None
    if h < 1 or w < 1:
        raise BackendError(f"--size must be positive, got {text!r}")
    return h, w


def machine_info() -> dict:
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpus: list[str] = []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for pkg in ("numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "tensorrt", "onnx",
                "segmentation-models-pytorch", "opencv-python-headless"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
        isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd")
               if f" {f}" in flags]
    except OSError:
        isa = []
    return {"host": socket.gethostname(), "cpu": cpu, "cpu_count": os.cpu_count(), "usable_cores": usable,
            "isa": isa, "gpus": gpus, "os": platform.platform(), "python": platform.python_version(),
            "versions": versions}


def runs_file(card: dict, model_dir: Path, name: str, precision: str) -> tuple[Path | None, str]:
    """(the file `name` runs at `precision`, "") by the model directory's export contract, or (None, why not:
    the `asset export` command that makes it)."""
    try:
        keys = modeldir.export_keys_for(name, precision)
        if not keys:
            return model_dir / card.get("weights", modeldir.WEIGHTS), ""
        found = modeldir.find_export(card, model_dir, keys)
    except modeldir.ModelDirError as exc:
        return None, str(exc)
    if found is None:
        return None, f"not exported: {modeldir.export_command(keys[0], model_dir)}"
    return found[2], ""


def _size_mb(path: Path | None) -> float | None:
    if path is None or not path.exists():
        return None
    if path.suffix == ".xml":  # OpenVINO IR: xml + bin
        return round(sum(p.stat().st_size for p in path.parent.glob(path.stem + ".*")) / 1e6, 2)
    return round(path.stat().st_size / 1e6, 2)


def _latency(infer, x: np.ndarray, warmup: int, min_iter: int, max_iter: int, min_seconds: float,
             max_seconds: float) -> tuple[np.ndarray, float]:
    for _ in range(warmup):
        infer(x)
    times = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        infer(x)
        times.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if len(times) >= max_iter or elapsed >= max_seconds or (len(times) >= min_iter and elapsed >= min_seconds):
            break
    return np.asarray(times), elapsed


def _time_row(row, backend, x: np.ndarray, timing: tuple) -> None:
    """Time `backend` on `x` (timing: warmup, min_iter, max_iter, min_seconds, max_seconds) into `row`: per-image
    p50/p90/p99 ms, images per second, the iteration count and what ran."""
    times, _ = _latency(backend.infer, x, *timing)
    per_image = times * 1000 / row.batch
    row.p50_ms, row.p90_ms, row.p99_ms = (round(float(np.percentile(per_image, q)), 3) for q in (50, 90, 99))
    row.throughput = round(row.batch * len(times) / float(times.sum()), 2)
    row.iterations = len(times)
    row.extra = {"input_shape": list(x.shape), **backend.info()}


def latency_input(algorithm: Algorithm, image: np.ndarray, batch: int, size: tuple[int, int] | None) -> np.ndarray:
    """A preprocessed batch of a real image (resized to `size` = network H x W when given)."""
    import cv2

    if size is not None:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        x, _ = Algorithm(algorithm.channels, type(algorithm.size_policy)("pad", algorithm.size_policy.divisor, None),
                         algorithm.mean.ravel(), algorithm.std.ravel()).preprocess([image])
    else:
        x, _ = algorithm.preprocess([image])
    return np.ascontiguousarray(np.repeat(x, batch, axis=0))


def run_benchmark(model_dir, targets: list[tuple[str, str]] | None = None, batches=(1,), size=None,
                  split: str = "val", data=None, device: str = "cpu", threads: int | None = None,
                  limit: int | None = None, warmup: int = 3, min_iter: int = 10, max_iter: int = 500,
                  min_seconds: float = 2.0, max_seconds: float = 15.0, max_accuracy_drop: float = 0.02,
                  log=None) -> dict:
    """Benchmark MODEL_DIR; returns the JSON document (see module doc)."""
    log = log or (lambda m: None)
    model_dir = Path(model_dir)
    card = modeldir.verify(model_dir)
    algorithm = Algorithm.from_card(card)
    explicit = targets is not None
    status = backend_status()
    if explicit:
        for name, _ in targets:
            if status[name]:
                raise BackendError(f"cannot benchmark {name!r} here: {status[name]}")
    targets = targets or DEFAULT_ORDER
    items = scoring.split_items(card, split, data, limit=limit)
    if not items:
        raise modeldir.ModelDirError(f"the dataset has no {split!r} images to measure accuracy on")
    first_image = load_image(items[0].path)  # the latency runs' input
    rows: list[Row] = []
    reference = None  # (name, precision, predictions, metrics)
    ordered = sorted(targets, key=lambda t: (t != ("pytorch", "fp32"), t != ("onnxruntime", "fp32")))
    results: dict[tuple[str, str], list[Row]] = {}
    for name, precision in ordered:
        made = [Row(name, precision, b) for b in batches]
        results[(name, precision)] = made
        file, why = runs_file(card, model_dir, name, precision)
        for r in made:
            r.file = str(file.relative_to(model_dir)) if file else None
            r.size_mb = _size_mb(file)
        if status[name]:
            del made[1:]  # one row says it
            made[0].status, made[0].reason = "unavailable", status[name]
            continue
        if file is None:
            del made[1:]
            made[0].status, made[0].reason = "failed", why
            continue
        dev = "cuda" if BACKENDS[name].needs_gpu else device  # tensorrt, onnxruntime-cuda / -tensorrt
        log(f"{name}/{precision}: loading")
        try:
            backend = load_backend(name, model_dir, precision=precision, device=dev, threads=threads, card=card,
                                   verify=False)
        except Exception as exc:  # noqa: BLE001 - any engine error is a table row
            for r in made:
                r.status, r.reason = "failed", f"{type(exc).__name__}: {exc}"
            continue
        try:
            scores, preds = scoring.score_items(backend.infer, algorithm, items, keep_predictions=True)
            metrics = scoring.metrics(scores)
            wrong = ""
            if reference is None and precision == "fp32":
                reference = (name, precision, preds, metrics)
            elif reference is not None:
                agree = scoring.agreement(preds, reference[2])
                for r in made:
                    r.decisions_equal_reference = f"{agree['decisions_equal']}/{agree['images']}"
                    r.mask_agreement = round(agree["mask_agreement"], 6)
                ref_m = reference[3]
                if precision == "fp32":
                    if agree["decisions_equal"] != agree["images"] or agree["mask_agreement"] < 0.999:
                        wrong = (f"differs from {reference[0]}: decisions equal {agree['decisions_equal']}/"
                                 f"{agree['images']}, mask pixels equal {agree['mask_agreement']:.3%}")
                elif (metrics["accuracy"] < ref_m["accuracy"] - max_accuracy_drop
                      or metrics["pixel_iou"] < ref_m["pixel_iou"] - max_accuracy_drop):
                    wrong = (f"accuracy {ref_m['accuracy']:.4f} -> {metrics['accuracy']:.4f}, pixel IoU "
                             f"{ref_m['pixel_iou']:.4f} -> {metrics['pixel_iou']:.4f} vs {reference[0]}")
            for r in made:
                r.accuracy, r.pixel_iou = metrics["accuracy"], metrics["pixel_iou"]
                if wrong:
                    r.status, r.reason = "exported but wrong", wrong
            for r in made:
                _time_row(r, backend, latency_input(algorithm, first_image, r.batch, size),
                          (warmup, min_iter, max_iter, min_seconds, max_seconds))
                log(f"{name}/{precision} batch {r.batch}: p50 {r.p50_ms:.2f} ms/img, {r.throughput:.1f} img/s "
                    f"({r.iterations} iterations)")
        except Exception as exc:  # noqa: BLE001
            for r in made:
                r.status, r.reason = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            backend.close()
    for t in targets:
        rows.extend(results[t])
    doc = {"schema": SCHEMA, "created": modeldir.now_iso(), "machine": machine_info(),
           "model": {"dir": str(model_dir), "arch": card.get("arch"), "encoder": card.get("encoder"),
                     "dataset": {k: (card.get("dataset") or {}).get(k) for k in ("name", "version")}},
           "split": split, "images": len(items), "size": list(size) if size else None, "batches": list(batches),
           "device": device, "threads": threads, "reference": reference[0] if reference else None,
           "rows": [asdict(r) for r in rows]}
    return doc


def _f(v, fmt="{:.4f}"):
    return "-" if v is None else fmt.format(v)


def to_markdown(doc: dict) -> str:
    m = doc["machine"]
    gpu = ", ".join(m["gpus"]) or "no GPU"
    lines = [f"Benchmark of {doc['model']['arch']}/{doc['model']['encoder']} on {m['cpu']} "
             f"({m['usable_cores']} cores, {gpu}); accuracy/IoU on {doc['images']} {doc['split']} images; "
             f"latency per image after warm-up", "",
             "| backend | precision | batch | status | size (MB) | accuracy | IoU | p50 ms | p90 ms | p99 ms | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {status} | {_f(r['size_mb'], '{:.1f}')} | "
                     f"{_f(r['accuracy'])} | {_f(r['pixel_iou'])} | {_f(r['p50_ms'], '{:.2f}')} | "
                     f"{_f(r['p90_ms'], '{:.2f}')} | {_f(r['p99_ms'], '{:.2f}')} | {_f(r['throughput'], '{:.1f}')} |")
    v = m["versions"]
    lines += ["", "Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v))]
    return "\n".join(lines) + "\n"


def write_results(doc: dict, out: Path, render=to_markdown) -> tuple[Path, Path]:
    """OUT.md (the document rendered by `render`) and OUT.json (atomic)."""
    out = Path(out)
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    files.write_text_atomic(md, render(doc))
    files.write_json_atomic(js, doc)
    return md, js



# ----------------------------------------------------------------------------- speed only (no dataset)
SPEED_SCHEMA = "asset-benchmark-speed/1"


def device_description(root: Path = Path("/")) -> dict:
    """What this device is, for a per-device speed file: board (device tree), Jetson L4T release, CPU, GPUs."""
    out: dict = {}
    try:
        out["board"] = (root / "proc/device-tree/model").read_bytes().rstrip(b"\x00\n ").decode("utf-8", "replace")
    except OSError:
        pass
    try:
        out["l4t"] = (root / "etc/nv_tegra_release").read_text().splitlines()[0].lstrip("# ").strip()
    except (OSError, IndexError):
        pass
    m = machine_info()
    gpus = ", ".join(m["gpus"])
    out["description"] = " / ".join(v for v in (out.get("board"), out.get("l4t") and "L4T " + out["l4t"].split(",")[0],
                                                 f"{m['cpu']} ({m['usable_cores']} cores)", gpus) if v)
    return out


def speed_size(card: dict, size: tuple[int, int] | None) -> tuple[int, int]:
    """The network input size to time at: --size, else the model's fixed size, else its training size."""
    inp = card.get("input") or {}
    chosen = size or (inp.get("size_policy") or {}).get("size") or inp.get("train_size")
    if not chosen:
        raise BackendError("the model takes any input size and records none: pass --size HxW")
    return int(chosen[0]), int(chosen[1])


def run_speed(model_dir, targets: list[tuple[str, str]] | None = None, batches=(1,), size=None, device: str = "cpu",
              threads: int | None = None, warmup: int = 3, min_iter: int = 10, max_iter: int = 500,
              min_seconds: float = 2.0, max_seconds: float = 15.0, seed: int = 0, log=None) -> dict:
    """Latency and throughput of MODEL_DIR's backends on random input, without any dataset (what a device runs to
    report its figures). Rows as in run_benchmark, without the accuracy columns."""
    log = log or (lambda m: None)
    model_dir = Path(model_dir)
    card = modeldir.verify(model_dir)
    algorithm = Algorithm.from_card(card)
    h, w = speed_size(card, size)
    shape = (h, w) if algorithm.channels == 1 else (h, w, algorithm.channels)
    image = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    status = backend_status()
    if targets is not None:
        for name, _ in targets:
            if status[name]:
                raise BackendError(f"cannot benchmark {name!r} here: {status[name]}")
    rows: list[Row] = []
    for name, precision in targets or DEFAULT_ORDER:
        file, why = runs_file(card, model_dir, name, precision)
        made = [Row(name, precision, b, file=str(file.relative_to(model_dir)) if file else None,
                    size_mb=_size_mb(file)) for b in batches]
        if status[name] or file is None:  # one row says it
            made[0].status = "unavailable" if status[name] else "failed"
            made[0].reason = status[name] or why
            rows.append(made[0])
            continue
        rows.extend(made)
        log(f"{name}/{precision}: loading")
        try:
            backend = load_backend(name, model_dir, precision=precision, device="cuda" if BACKENDS[name].needs_gpu
                                   else device, threads=threads, card=card, verify=False)
        except Exception as exc:  # noqa: BLE001 - any engine error is a table row
            for r in made:
                r.status, r.reason = "failed", f"{type(exc).__name__}: {exc}"
            continue
        try:
            for r in made:
                _time_row(r, backend, latency_input(algorithm, image, r.batch, (h, w)),
                          (warmup, min_iter, max_iter, min_seconds, max_seconds))
                log(f"{name}/{precision} batch {r.batch}: {r.p50_ms:.2f} ms/img, {r.throughput:.1f} FPS")
        except Exception as exc:  # noqa: BLE001
            for r in made:
                r.status, r.reason = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            backend.close()
    return {"schema": SPEED_SCHEMA, "created": modeldir.now_iso(), "device": device_description(),
            "machine": machine_info(), "model": {"dir": str(model_dir), "arch": card.get("arch"),
                                                 "encoder": card.get("encoder")},
            "input": {"size": [h, w], "channels": algorithm.channels, "batches": list(batches),
                      "data": f"random uint8 image (seed {seed}), preprocessed like a real one"},
            "threads": threads, "rows": [{**asdict(r), "ms": r.p50_ms, "fps": r.throughput} for r in rows]}


def speed_markdown(doc: dict) -> str:
    h, w = doc["input"]["size"]
    lines = [f"Speed of {doc['model']['arch']}/{doc['model']['encoder']} on {doc['device']['description']}; "
             f"{h}x{w} random input, ms per image after warm-up (no dataset: no accuracy figures)", "",
             "| backend | precision | batch | status | ms p50 | ms p90 | FPS |", "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {status} | {_f(r['ms'], '{:.2f}')} | "
                     f"{_f(r['p90_ms'], '{:.2f}')} | {_f(r['fps'], '{:.1f}')} |")
    return "\n".join(lines) + "\n"


def write_speed(doc: dict, out: Path) -> tuple[Path, Path]:
    """OUT.md and OUT.json of a speed-only run."""
    return write_results(doc, out, render=speed_markdown)


__all__ = ["BACKENDS", "machine_info", "parse_size", "parse_targets", "run_benchmark", "run_speed", "to_markdown",
           "write_results", "write_speed"]
