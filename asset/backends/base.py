"""The backend contract: one small interface every inference engine implements (no torch here).

    backend = load_backend("onnxruntime", MODEL_DIR, precision="fp32", device="cpu", threads=None)
    logits = backend.infer(batch)      # float32 N x C x H x W (from Algorithm.preprocess) -> float32 N x 1 x H x W
    backend.close()

A backend only runs the network: pre- and post-processing are `asset.algorithm.Algorithm`'s, shared by all
backends (see `asset.predictor.Predictor`), so a prediction is the same whichever backend made it.
Backends are thread-unsafe by design (the server serialises calls) and reusable for any number of calls.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asset import modeldir
from asset.errors import AssetError

PRECISIONS = ("fp32", "fp16", "int8")
DEVICES_HELP = "cpu | cuda | cuda:N"


class BackendError(AssetError, RuntimeError):
    """A backend that cannot be used here (not installed, no GPU, model not exported, bad option); says how to fix it."""


def default_threads() -> int:
    """Intra-op threads: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_device(device: str | None) -> tuple[str, int]:
    """'cpu' -> ('cpu', 0); 'cuda' / 'gpu' -> ('cuda', 0); 'cuda:1' -> ('cuda', 1)."""
    text = str(device or "cpu").lower().strip()
    kind, _, index = text.partition(":")
    if kind == "gpu":
        kind = "cuda"
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise BackendError(f"device {device!r} is not one of {DEVICES_HELP}")
    return kind, int(index or 0)


class Backend:
    """Base class. Subclasses set `name`, `precision`, `device`, `file` and implement `_infer` (and `close`)."""

    name: str = "?"
    precision: str = "fp32"
    device: str = "cpu"
    file: Path | None = None  # the model file this backend runs (weights.pt, model.onnx, engine, ...)
    max_batch: int | None = None  # largest batch one engine call takes (None: any); bigger batches are chunked

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 N x C x H x W -> float32 N x 1 x H x W logits."""
        x = np.asarray(batch)
        if x.ndim != 4:
            raise BackendError(f"{self.name}: expected an N x C x H x W batch, got shape {x.shape}")
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        if self.max_batch is None or x.shape[0] <= self.max_batch:
            return self._infer(x)
        return np.concatenate([self._infer(x[i:i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)])

    def _infer(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine (idempotent)."""

    def info(self) -> dict:
        """What runs: backend, precision, device, file (for logs, /health, benchmark tables)."""
        return {"backend": self.name, "precision": self.precision, "device": self.device,
                "file": str(self.file) if self.file else None}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}/{self.precision} on {self.device}: {self.file}>"


def export_entry(card: dict, model_dir: Path, key: str, backend: str) -> tuple[dict, Path]:
    """The card's record of export `key` and its file, or a BackendError saying which `asset export` makes it."""
    return _recorded(card, model_dir, (key,), backend)[1:]


def export_for(card: dict, model_dir: Path, backend: str, precision: str) -> tuple[str, dict, Path]:
    """(key, record, file) of the export `backend` runs at `precision` (the model directory's contract:
    `modeldir.export_keys_for`, first one recorded), or a BackendError saying which `asset export` makes it."""
    try:
        keys = modeldir.export_keys_for(backend, precision)
    except modeldir.ModelDirError as exc:
        raise BackendError(str(exc)) from None
    if not keys:
        raise BackendError(f"backend {backend!r} runs weights.pt, not an export")
    return _recorded(card, model_dir, keys, backend)


def _recorded(card: dict, model_dir: Path, keys: tuple[str, ...], backend: str) -> tuple[str, dict, Path]:
    found = modeldir.find_export(card, Path(model_dir), keys)
    if found is None:
        have = ", ".join(sorted(card.get("exports") or {})) or "none"
        needs = " or ".join(repr(k) for k in keys)
        how = (modeldir.export_command(keys[0], model_dir) if keys[0] in modeldir.EXPORT_KINDS
               else f"asset export --model {model_dir}")
        raise BackendError(
            f"{model_dir}: backend {backend!r} needs the {needs} export, which this model directory does not have "
            f"(exports: {have}). Make it with `{how}`"
        )
    key, entry, path = found
    if not path.is_file():
        raise BackendError(f"{model_dir}: export {key!r} is recorded but {entry['file']} is missing: re-export it")
    return key, entry, path
