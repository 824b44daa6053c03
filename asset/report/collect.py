"""Reading a sweep directory and device benchmark JSONs into one table of models x devices; everything that cannot
be used is kept as a message in `left_out` instead of stopping the report."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from asset.errors import AssetError

BENCH_SCHEMAS = ("asset-benchmark/1", "asset-benchmark-speed/1")


class ReportError(AssetError, ValueError):
    """A report that cannot be made at all (no sweep directory, bad options); says why."""


@dataclass
class Model:
    dataset: str
    arch: str
    encoder: str
    val_acc: float | None = None
    val_iou: float | None = None
    test_acc: float | None = None
    test_iou: float | None = None
    test_source: str = "test"  # "test" or "NAME test" (cross-dataset)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.dataset, self.arch, self.encoder


@dataclass
class Cell:
    ms: float | None
    reason: str = ""  # why there is no figure
    source: str = ""


@dataclass
class Collected:
    models: dict[tuple[str, str, str], Model] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (dataset/arch--encoder, reason)
    left_out: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # device columns "LABEL:BACKEND[-PRECISION]", in order
    cells: dict[tuple[tuple[str, str, str], str], Cell] = field(default_factory=dict)
    cross: dict[str, str] = field(default_factory=dict)  # dataset -> dataset whose test split is "test"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (dataset/arch--encoder, why it cannot work)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _model_from_result(res: dict, where: str) -> Model:
    m = res.get("metrics")
    if not isinstance(m, dict) or not isinstance(m.get("val"), dict):
        raise ValueError(f"{where}: result.json has no validation metrics")
    val = m["val"]
    test, source = m.get("cross_test"), "test"
    if isinstance(test, dict):
        source = f"{(test.get('dataset') or {}).get('name', '?')} test"
    else:
        test = m.get("test") if isinstance(m.get("test"), dict) else {}
    model = Model(str(res["dataset"]), str(res["arch"]), str(res["encoder"]), _num(val.get("accuracy")),
                  _num(val.get("pixel_iou")), _num(test.get("accuracy")), _num(test.get("pixel_iou")), source)
    if model.val_acc is None:
        raise ValueError(f"{where}: validation accuracy missing or not a number")
    return model


def read_sweep(sweep_dir: Path, verify: bool = True) -> Collected:
    """Models of a sweep directory (done ones in `models`, failed ones in `failed`, the rest in `left_out`) and
    the sweep's own benchmark figures (its `benchmark.device` label)."""
    from asset import modeldir

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such sweep directory")
    out = Collected()
    grid: set[tuple[str, str]] = set()
    try:
        from asset.sweep.grid import SweepSpec, expand

        spec = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
        datasets = spec.get("datasets") or {}
        for name, d in datasets.items():
            if isinstance(d, dict) and d.get("test_data"):
                out.cross[name] = d["test_data"]
        jobs, skipped = expand(SweepSpec(**spec["spec"]), [(n, int(d.get("channels", 3))) for n, d in datasets.items()])
        grid = {(j.dataset, j.name) for j in jobs}
        out.skipped = [(j.key, why) for j, why in skipped]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as exc:
        out.left_out.append(f"{sweep_dir}/sweep.yaml missing or unreadable ({type(exc).__name__}): models that "
                            "never started cannot be listed")
    seen = set()
    for jdir in sorted(p for p in sweep_dir.glob("*/*") if p.is_dir()):
        where = f"{jdir.parent.name}/{jdir.name}"
        seen.add((jdir.parent.name, jdir.name))
        path = jdir / "result.json"
        if not path.exists():
            out.left_out.append(f"{where}: no result.json (not finished; `asset sweep` continues it)")
            continue
        try:
            res = json.loads(path.read_text())
            if not isinstance(res, dict) or res.get("status") not in ("done", "failed"):
                raise ValueError("not a sweep result (status done or failed)")
        except ValueError as exc:
            out.left_out.append(f"{where}: result.json is corrupt ({exc})")
            continue
        if res["status"] == "failed":
            out.failed.append((where, str(res.get("reason", "no reason recorded"))))
            continue
        try:
            model = _model_from_result(res, where)
            if verify:
                modeldir.verify(jdir / str(res.get("model_dir", "model")))
        except (ValueError, KeyError, modeldir.ModelDirError) as exc:
            out.left_out.append(f"{where}: {exc}")
            continue
        out.models[model.key] = model
        b = res.get("benchmark") or {}
        if b.get("file"):
            try:
                doc = json.loads((jdir / b["file"]).read_text())
            except (OSError, ValueError) as exc:
                out.left_out.append(f"{where}: its benchmark {b['file']} is unreadable ({exc})")
                continue
            add_benchmark(out, doc, str(jdir / b["file"]), label=b.get("device"), model=model)
    for name, job in sorted(grid - seen):
        out.left_out.append(f"{name}/{job}: not run yet")
    return out


def device_label(doc: dict) -> str:
    """A device's name from its benchmark JSON: the speed file's description, else CPU (cores) + GPUs."""
    if doc.get("device_label"):
        return str(doc["device_label"])
    if isinstance(doc.get("device"), dict) and doc["device"].get("description"):
        return str(doc["device"]["description"])
    m = doc.get("machine") or {}
    gpus = ", ".join(m.get("gpus") or [])
    return f"{m.get('cpu', 'unknown CPU')} ({m.get('usable_cores', '?')} cores{', ' + gpus if gpus else ''})"


def _column(label: str, backend: str, precision: str) -> str:
    return f"{label}:{backend}" + ("" if precision == "fp32" else f"-{precision}")


def add_benchmark(out: Collected, doc: dict, source: str, label: str | None = None, model: Model | None = None) -> None:
    """One benchmark JSON (one model on one device) into `out`: a cell per backend/precision at batch 1 (else the
    smallest batch); unknown schemas, models not in the sweep and conflicting figures go to `left_out`."""
    if not isinstance(doc, dict) or doc.get("schema") not in BENCH_SCHEMAS:
        schema = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        out.left_out.append(f"{source}: unknown schema {schema!r} (expected {' or '.join(BENCH_SCHEMAS)})")
        return
    label = label or device_label(doc)
    info = doc.get("model") or {}
    arch, encoder = info.get("arch"), info.get("encoder")
    dataset = (info.get("dataset") or {}).get("name")
    if model is not None:
        targets = [model]
    else:
        targets = [m for m in out.models.values() if m.arch == arch and m.encoder == encoder
                   and (dataset is None or m.dataset == dataset)]
    if not targets:
        out.left_out.append(f"{source}: model {arch}/{encoder}{' (' + dataset + ')' if dataset else ''} "
                            "is not in the sweep")
        return
    rows = [r for r in doc.get("rows") or [] if isinstance(r, dict)]
    batches = sorted({int(r.get("batch", 1)) for r in rows}) or [1]
    batch = 1 if 1 in batches else batches[0]
    for r in rows:
        if int(r.get("batch", 1)) != batch and r.get("status") == "ok":
            continue
        col = _column(label, str(r.get("backend")), str(r.get("precision", "fp32")))
        ms = _num(r.get("ms", r.get("p50_ms")))
        if r.get("status") == "ok" and ms is not None:
            cell = Cell(ms, source=source)
        else:
            cell = Cell(None, f"{r.get('status', 'no figure')}: {r.get('reason') or 'no time recorded'}", source)
        if col not in out.columns:
            out.columns.append(col)
        for m in targets:
            _put(out, m, col, cell)


def _put(out: Collected, model: Model, col: str, cell: Cell) -> None:
    key = (model.key, col)
    old = out.cells.get(key)
    if old is None or (old.ms is None and old.source != "conflict" and cell.ms is not None):
        out.cells[key] = cell  # a figure beats a missing one (e.g. a later run after the export was made)
        return
    if old.source == "conflict" or cell.ms is None or old.ms == cell.ms:
        return
    why = (f"conflicting figures for {model.arch}/{model.encoder} ({model.dataset}) on {col}: {old.source} says "
           f"{old.ms} ms, {cell.source} says {cell.ms} ms")
    out.cells[key] = Cell(None, why, "conflict")
    out.left_out.append(why + "; both left out")


def read_benchmarks(out: Collected, specs: list[str]) -> None:
    """--benchmarks [LABEL=]FILE_OR_DIR ...: every *.json (a folder: all of them) added to `out`."""
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec else (None, "", spec)
        p = Path(path)
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        if p.is_dir() and not files:
            out.left_out.append(f"{p}: no *.json benchmark files in it")
        for f in files:
            try:
                doc = json.loads(f.read_text())
            except OSError as exc:
                out.left_out.append(f"{f}: cannot be read ({exc.strerror or exc})")
                continue
            except ValueError as exc:
                out.left_out.append(f"{f}: not JSON ({exc})")
                continue
            add_benchmark(out, doc, str(f), label=label or None)
