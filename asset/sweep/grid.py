"""The sweep's grid: a YAML sweep file and command-line options -> jobs (dataset x arch x encoder), the skipped
combinations with their reasons, and the deterministic share of one shard."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from asset.config import ConfigError, deep_merge, load_default, parse_override, set_key, validate_config
from asset.errors import AssetError

SPEC_FILE = "sweep.yaml"
SPEC_KEYS = ("archs", "encoders", "train", "per_encoder", "datasets", "benchmark", "export")
BENCHMARK_DEFAULTS = {"backends": ["pytorch"], "batch": 1, "size": None, "device": "sweep-host",
                      "min_iter": 5, "min_seconds": 1.0, "max_seconds": 10.0}


class SweepError(AssetError, ValueError):
    """A sweep that cannot start: a bad sweep file, shard, or directory; says why."""


@dataclass
class SweepSpec:
    archs: list[str]
    encoders: list[str]
    train: dict = field(default_factory=dict)  # nested keys of asset train's config, shared by every model
    datasets: dict = field(default_factory=dict)  # dataset name -> {train: {...}, test_data: DIR}
    benchmark: dict = field(default_factory=lambda: dict(BENCHMARK_DEFAULTS))
    export: list[str] = field(default_factory=list)  # formats exported (and benchmarked) after training
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, applied last
    per_encoder: dict = field(default_factory=dict)  # encoder -> train settings (e.g. its encoder_weights)

    def to_dict(self) -> dict:
        return {"archs": self.archs, "encoders": self.encoders, "train": self.train, "datasets": self.datasets,
                "per_encoder": self.per_encoder, "benchmark": self.benchmark, "export": self.export,
                "overrides": self.overrides}


@dataclass(frozen=True)
class Job:
    dataset: str  # dataset name (dataset.json "name")
    arch: str
    encoder: str

    @property
    def name(self) -> str:
        return f"{self.arch}--{self.encoder}"

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


def _csv(text) -> list[str]:
    if text is None:
        return []
    items = text if isinstance(text, list) else str(text).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def load_spec(path: str | Path | None = None, archs: str | None = None, encoders: str | None = None,
              overrides: list[str] | None = None) -> SweepSpec:
    """The sweep file (if any), then --archs / --encoders / --set from the command line."""
    doc: dict = {}
    if path:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise SweepError(f"{path}: sweep file cannot be read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise SweepError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(doc, dict):
            raise SweepError(f"{path}: a sweep file must be a mapping with keys {', '.join(SPEC_KEYS)}")
        unknown = sorted(set(doc) - set(SPEC_KEYS) - {"overrides"})
        if unknown:
            raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(SPEC_KEYS)}")
    bench = dict(BENCHMARK_DEFAULTS)
    extra = set(doc.get("benchmark") or {}) - set(bench)
    if extra:
        raise SweepError(f"unknown benchmark key(s) {', '.join(sorted(extra))}; valid: {', '.join(bench)}")
    bench.update(doc.get("benchmark") or {})
    bench["backends"] = _csv(bench["backends"])
    spec = SweepSpec(archs=_csv(archs) or _csv(doc.get("archs")), encoders=_csv(encoders) or _csv(doc.get("encoders")),
                     train=doc.get("train") or {}, datasets=doc.get("datasets") or {}, benchmark=bench,
                     export=_csv(doc.get("export")), per_encoder=doc.get("per_encoder") or {},
                     overrides=list(doc.get("overrides") or []) + list(overrides or []))
    if not spec.archs or not spec.encoders:
        raise SweepError("the grid is empty: give --archs and --encoders (comma-separated) or a sweep file with "
                         "archs: [...] and encoders: [...]")
    for name, over in spec.datasets.items():
        if not isinstance(over, dict) or set(over) - {"train", "test_data"}:
            raise SweepError(f"datasets.{name}: expected a mapping with train: {{...}} and/or test_data: DIR")
    for enc in [None, *spec.per_encoder]:  # bad keys fail now, not after hours
        training_config(spec, "check", "unet", enc or "mobilenet_v2", "unused")
    return spec


def training_config(spec: SweepSpec, dataset: str, arch: str, encoder: str, data_path: str) -> dict:
    """asset train's config for one model: defaults <- shared train <- the encoder's <- the dataset's <- --set."""
    cfg = deep_merge(load_default(), spec.train, "train.")
    if spec.per_encoder.get(encoder):
        cfg = deep_merge(cfg, spec.per_encoder[encoder], f"per_encoder.{encoder}.")
    over = (spec.datasets.get(dataset) or {}).get("train")
    if over:
        cfg = deep_merge(cfg, over, f"datasets.{dataset}.train.")
    for text in spec.overrides:
        set_key(cfg, *parse_override(text))
    cfg = copy.deepcopy(cfg)
    set_key(cfg, "model.arch", arch)
    set_key(cfg, "model.encoder", encoder)
    set_key(cfg, "data.path", data_path)
    try:
        validate_config(cfg)
    except ConfigError as exc:
        raise SweepError(f"training settings: {exc}") from None
    return cfg


def expand(spec: SweepSpec, datasets: list[tuple[str, int]]) -> tuple[list[Job], list[tuple[Job, str]]]:
    """Every dataset x arch x encoder in the sweep's order: (valid jobs, [(skipped job, reason)])."""
    from asset.models.registry import ModelConfigError, check_combination

    jobs, skipped = [], []
    for name, channels in datasets:
        for arch in spec.archs:
            for encoder in spec.encoders:
                job = Job(name, arch, encoder)
                try:
                    check_combination(arch, encoder, channels)
                except ModelConfigError as exc:
                    skipped.append((job, str(exc)))
                    continue
                jobs.append(job)
    return jobs, skipped


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' (0 <= i < n, as SLURM's array task id / count) -> (i, n); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise SweepError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise SweepError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_jobs(jobs: list[Job], shard: tuple[int, int]) -> list[Job]:
    """Job k of the grid belongs to shard k mod n: the shards are disjoint, cover the grid, and do not depend on
    which jobs are already done."""
    i, n = shard
    return [j for k, j in enumerate(jobs) if k % n == i]
