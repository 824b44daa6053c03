"""Running a sweep: per model train (or resume), evaluate val + test (+ a cross-dataset test), export, benchmark;
its outcome in result.json. A failure is recorded with its step and reason and the sweep goes on."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import yaml

from asset import files, modeldir
from asset.sweep.grid import SPEC_FILE, Job, SweepError, SweepSpec, expand, shard_jobs, training_config

RESULT = "result.json"
LOCK = "lock"
RESULT_SCHEMA = "asset-sweep-result/1"


def _log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def open_datasets(paths: list[str]) -> list[tuple[str, str, int]]:
    """[(name, resolved version dir, channels)] for --data; two versions of one dataset name are refused."""
    from asset.training.data import dataset_channels, open_dataset

    out, seen = [], {}
    for p in paths:
        version_dir, doc = open_dataset(p)
        name = doc["name"]
        if name in seen and seen[name] != str(version_dir):
            raise SweepError(f"two --data directories are dataset {name!r} ({seen[name]}, {version_dir}); "
                             "sweep one version per dataset name (or use another sweep directory)")
        seen[name] = str(version_dir)
        out.append((name, str(version_dir), dataset_channels(doc)))
    return out


def job_dir(sweep_dir: Path, job: Job) -> Path:
    return Path(sweep_dir) / job.dataset / job.name


def read_spec_file(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / SPEC_FILE
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError:
        raise SweepError(f"{sweep_dir}: no {SPEC_FILE}: not a sweep directory (made by `asset sweep --out`)") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: corrupt ({exc})") from None
    if not isinstance(doc, dict) or "spec" not in doc or "datasets" not in doc:
        raise SweepError(f"{path}: not a sweep file written by `asset sweep`")
    return doc


def write_spec_file(sweep_dir: Path, spec: SweepSpec, datasets: list[tuple[str, str, int]],
                    test_data: dict[str, str]) -> None:
    """sweep.yaml: what --status and `asset report` read. Datasets from earlier runs into this directory are kept."""
    path = Path(sweep_dir) / SPEC_FILE
    known = read_spec_file(sweep_dir)["datasets"] if path.exists() else {}
    for name, vdir, channels in datasets:
        known[name] = {"path": vdir, "channels": channels, "test_data": test_data.get(name)}
    doc = {"schema": "asset-sweep/1", "spec": spec.to_dict(), "datasets": known}
    files.write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False))


# ----------------------------------------------------------------------------- lock (one process per model)
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(jdir: Path) -> dict | None:
    """The process that holds this model's lock, or None (no lock, or a dead process on this host)."""
    try:
        info = json.loads((jdir / LOCK).read_text())
    except (OSError, ValueError):
        return None
    if info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", 0))):
        return None
    return info


def acquire(jdir: Path) -> bool:
    """Take the model's lock (O_EXCL); a stale lock of a dead process on this host is taken over."""
    jdir.mkdir(parents=True, exist_ok=True)
    path = jdir / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock_owner(jdir) is not None:
                return False
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": modeldir.now_iso()}, fh)
        return True
    return False


def release(jdir: Path) -> None:
    (jdir / LOCK).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- state
def read_result(jdir: Path) -> dict | None:
    try:
        doc = json.loads((jdir / RESULT).read_text())
    except OSError:
        return None
    except ValueError as exc:
        return {"status": "corrupt", "reason": f"{jdir / RESULT}: not JSON ({exc})"}
    return doc if isinstance(doc, dict) else {"status": "corrupt", "reason": f"{jdir / RESULT}: not an object"}


def job_state(jdir: Path) -> tuple[str, str]:
    """(done | failed | running | interrupted | to do | corrupt, detail)."""
    res = read_result(jdir)
    if res is not None and res.get("status") in ("done", "failed", "corrupt"):
        return res["status"], res.get("reason", "") if res["status"] != "done" else ""
    owner = lock_owner(jdir) if (jdir / LOCK).exists() else None
    if owner is not None:
        return "running", f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}"
    if (jdir / "model" / "checkpoints" / "last.ckpt").is_file():
        return "interrupted", "resumes from its last checkpoint"
    return "to do", ""


# ----------------------------------------------------------------------------- one model
def _evaluate(model_dir: Path, data: str, split: str, batch_size: int) -> dict | None:
    """Metrics of the trained model on one split of a dataset (None: the split is empty)."""
    from asset.algorithm import Algorithm
    from asset.evaluation import compute_metrics, evaluate_samples, torch_runner
    from asset.models.factory import load_network
    from asset.scoring import dataset_items
    from asset.training.data import open_dataset
    version_dir, doc = open_dataset(data)
    samples = dataset_items(version_dir, doc, split)
    if not samples:
        return None
    net, card = load_network(model_dir)
    algorithm = Algorithm.from_card(card)
    records = evaluate_samples(torch_runner(net), algorithm, samples, batch_size)
    metrics = compute_metrics(records, algorithm.image_threshold)
    metrics["dataset"] = {"name": doc["name"], "version": doc["version"], "split": split}
    return metrics


def _train(cfg: dict, model: Path) -> dict:
    from asset.config import deep_merge, load_default
    from asset.training.train import load_run_config, train

    if (model / modeldir.CARD).exists():  # trained before the process was stopped in a later step
        return modeldir.verify(model)
    if (model / "checkpoints" / "last.ckpt").is_file():
        _log(f"{model}: resuming from checkpoints/last.ckpt")
        return train(deep_merge(load_default(), load_run_config(model)), model, resume=True)
    return train(cfg, model, overwrite=True)


def run_job(spec: SweepSpec, job: Job, data: str, test_data: str | None, jdir: Path) -> dict:
    """Train, evaluate, export and benchmark one model; result.json written (atomically) whatever happens."""
    model = jdir / "model"
    result: dict = {"schema": RESULT_SCHEMA, "dataset": job.dataset, "arch": job.arch, "encoder": job.encoder,
                    "model_dir": "model", "started": modeldir.now_iso()}
    step = "train"
    t0 = time.time()
    try:
        cfg = training_config(spec, job.dataset, job.arch, job.encoder, data)
        card = _train(cfg, model)
        best = (card.get("training") or {}).get("best_val_iou")
        val = (card.get("metrics") or {}).get("val") or {}
        if best is None or not math.isfinite(best) or val.get("accuracy") is None:
            raise RuntimeError(f"diverged: best validation IoU {best}, validation accuracy {val.get('accuracy')}")
        result["training"] = {k: card["training"].get(k) for k in ("epochs", "max_epochs", "best_val_iou",
                                                                   "seconds_this_session", "resumed")}
        step = "evaluate"
        batch = int(cfg["data"]["eval_batch_size"])
        result["metrics"] = {"val": val, "test": _evaluate(model, data, "test", batch)}
        if test_data:
            result["metrics"]["cross_test"] = _evaluate(model, test_data, "test", batch)
        step = "export"
        from asset.export import export_key, export_model

        for fmt in spec.export:  # any registered format, on the device it is made on (tensorrt: cuda)
            if export_key(fmt) not in (modeldir.verify(model).get("exports") or {}):
                export_model(model, fmt)
        step = "benchmark"
        result["benchmark"] = _benchmark(spec, model)
        result["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - any failure of one model is recorded; the sweep goes on
        result.update(status="failed", step=step, reason=f"{step}: {type(exc).__name__}: {exc}".strip())
        result["traceback"] = traceback.format_exc(limit=8)
    result["finished"] = modeldir.now_iso()
    result["seconds"] = round(time.time() - t0, 1)
    files.write_json_atomic(jdir / RESULT, result)
    return result


def _benchmark(spec: SweepSpec, model: Path) -> dict:
    from asset.benchmark import parse_size, parse_targets, run_benchmark, write_results

    b = spec.benchmark
    doc = run_benchmark(model, parse_targets(b["backends"]), batches=[int(b["batch"])], size=parse_size(b["size"]),
                        split="val", min_iter=int(b["min_iter"]), min_seconds=float(b["min_seconds"]),
                        max_seconds=float(b["max_seconds"]))
    doc["device_label"] = b["device"]
    _, js = write_results(doc, model / "evaluations" / "benchmark-sweep")
    return {"file": str(js.relative_to(model.parent)), "device": b["device"],
            "rows": [{k: r[k] for k in ("backend", "precision", "batch", "status", "reason", "p50_ms")}
                     for r in doc["rows"]]}


# ----------------------------------------------------------------------------- the sweep
def plan(spec: SweepSpec, data: list[str]) -> tuple[list[tuple[str, str, int]], list[Job], list[tuple[Job, str]]]:
    datasets = open_datasets(data)
    jobs, skipped = expand(spec, [(n, c) for n, _, c in datasets])
    return datasets, jobs, skipped


def run_sweep(spec: SweepSpec, data: list[str], sweep_dir: Path, shard=(0, 1), test_data: str | None = None,
              retry_failed: bool = False, dry_run: bool = False) -> dict:
    """Work through this shard's share of the grid; returns {job key: state} for the share."""
    sweep_dir = Path(sweep_dir)
    datasets, jobs, skipped = plan(spec, data)
    paths = {n: p for n, p, _ in datasets}
    tests = {n: (spec.datasets.get(n) or {}).get("test_data") or test_data for n, _, _ in datasets}
    mine = shard_jobs(jobs, shard)
    for job, why in skipped:
        _log(f"skipped {job.key}: {why}")
    _log(f"grid: {len(jobs)} models, {len(skipped)} skipped; shard {shard[0]}/{shard[1]}: {len(mine)} models")
    if dry_run:
        for job in mine:
            _log(f"would run {job.key}: {job_state(job_dir(sweep_dir, job))[0]}")
        return {j.key: job_state(job_dir(sweep_dir, j))[0] for j in mine}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_spec_file(sweep_dir, spec, datasets, {n: t for n, t in tests.items() if t})
    states = {}
    for job in mine:
        jdir = job_dir(sweep_dir, job)
        state, detail = job_state(jdir)
        if state == "done" or (state in ("failed", "corrupt") and not retry_failed) or state == "running":
            _log(f"{job.key}: {state} {detail}".rstrip())
            states[job.key] = state
            continue
        if not acquire(jdir):
            _log(f"{job.key}: taken by another process")
            states[job.key] = "running"
            continue
        try:
            _log(f"{job.key}: {'resuming' if state == 'interrupted' else 'starting'}")
            res = run_job(spec, job, paths[job.dataset], tests.get(job.dataset), jdir)
        finally:
            release(jdir)
        _log(f"{job.key}: {res['status']}{' - ' + res['reason'] if res['status'] != 'done' else ''}")
        states[job.key] = res["status"]
    return states


def sweep_status(sweep_dir: Path) -> tuple[list[tuple[str, str, str]], list[tuple[Job, str]]]:
    """[(job key, state, detail)] for the whole grid in sweep.yaml, and the skipped combinations."""
    doc = read_spec_file(sweep_dir)
    spec = SweepSpec(**{k: v for k, v in doc["spec"].items()})
    jobs, skipped = expand(spec, [(n, int(d.get("channels", 3))) for n, d in doc["datasets"].items()])
    rows = [(j.key, *job_state(job_dir(sweep_dir, j))) for j in jobs]
    return rows, skipped
