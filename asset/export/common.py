"""What the exporter modules share: option defaults, the PyTorch context they export from and verify against,
staging inside the model directory, the atomic install and the model.json record.

Every export is staged under MODEL_DIR/exports/.tmp-* (skipped by the checksums), verified
(`asset.export.verify.compare`), then moved into place and recorded (model.json + SHA256SUMS) by
`install_and_record` (`asset.modeldir.install_export`: under the directory's lock, after verifying the directory as
it stands; a re-export replaces the old export's file and checksums together, and until then the old export is the
one served); staged files left by a failure are removed when the Context closes, so a failed export writes nothing.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asset import modeldir
from asset.export.formats import DEFAULT_OPSET, ExportError, format_status

EXPORTS_DIR = modeldir.EXPORTS_DIR
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# every option's default (None in `options` = this); a format takes the ones its FORMATS row lists
DEFAULTS = {"opset": DEFAULT_OPSET, "simplify": True, "dynamic": True, "atol": 1e-3, "verify_images": 128,
            "calib_images": 32, "per_channel": True, "max_accuracy_drop": 0.02, "workspace": 4.0, "max_batch": 16}
PYTORCH = "PyTorch"  # compare()'s reference_name for the exports verified against the network itself


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def settings(options: dict) -> dict:
    """`options` (None = default) completed with DEFAULTS."""
    return {k: (options.get(k) if options.get(k) is not None else v) for k, v in DEFAULTS.items()}


def require(fmt: str) -> None:
    """ExportError unless this machine can produce `fmt` (before anything is loaded)."""
    why = format_status(fmt)
    if why:
        raise ExportError(f"this machine cannot produce {fmt!r}: {why}")


def versions(*names: str) -> dict:
    """Installed versions of the distributions `names` (those installed)."""
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def threads() -> int:
    from asset.backends import default_threads

    return default_threads()


def ort_infer(path: Path, n_threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX file under ONNX Runtime's CPU provider, with the backend's session options."""
    import onnxruntime as ort

    from asset.backends.ort import session_options

    sess = ort.InferenceSession(str(path), sess_options=session_options(n_threads or threads()),
                                providers=["CPUExecutionProvider"])
    return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def time_ms(infer, x: np.ndarray, seconds: float = 1.0, warmup: int = 2, min_iter: int = 5, max_iter: int = 50
            ) -> float:
    """Median latency (ms per call) of infer(x)."""
    for _ in range(warmup):
        infer(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iter or (len(times) < max_iter and time.perf_counter() - start < seconds):
        t = time.perf_counter()
        infer(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def stage(model_dir: Path, name: str, directory: bool = False) -> Path:
    """A temporary file (or directory) inside MODEL_DIR/exports, skipped by the checksums."""
    d = Path(model_dir) / EXPORTS_DIR
    d.mkdir(exist_ok=True)
    if directory:
        return Path(tempfile.mkdtemp(prefix=f"{modeldir.TMP_PREFIX}{name}.", dir=d))
    fd, tmp = tempfile.mkstemp(prefix=f"{modeldir.TMP_PREFIX}{name}.", dir=d)
    os.close(fd)
    return Path(tmp)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def staged_bytes(staged: Path) -> int:
    """Size of a staged file, or of every file under a staged directory."""
    staged = Path(staged)
    return sum(p.stat().st_size for p in staged.rglob("*") if p.is_file()) if staged.is_dir() \
        else staged.stat().st_size


def install_and_record(model_dir: Path, key: str, staged: Path, *, facts: dict, figures: dict, versions: dict,
                       started: float, log: Callable[[str], None]) -> dict:
    """Install the verified `staged` export as EXPORT_KINDS[key] (a staged directory becomes the directory of its
    file) and record it in model.json exports[key], atomically with the SHA256SUMS update and under the directory's
    lock (`modeldir.install_export`). Returns the entry."""
    model_dir = Path(model_dir)
    kind = modeldir.EXPORT_KINDS[key]
    size = staged_bytes(staged)
    entry = {"file": kind.file, "format": kind.format, "precision": kind.precision, "backend": kind.backend,
             "bytes": size, "created": modeldir.now_iso(), "seconds": round(time.perf_counter() - started, 1),
             "machine": platform.machine(), **facts, "verification": figures, "versions": versions}
    modeldir.install_export(model_dir, key, staged, entry)
    log(f"wrote {model_dir / kind.file} ({size / 1e6:.1f} MB) and recorded it in model.json exports[{key!r}]")
    return entry


class Context:
    """What an export from PyTorch needs: the network, the card, the algorithm and the verification images (the
    first of val / test / train of the model's dataset). A context manager: staged paths are removed on exit."""

    def __init__(self, model_dir: Path, data, verify_images: int, log: Callable[[str], None]) -> None:
        from asset import scoring
        from asset.algorithm import Algorithm, load_image, load_mask
        from asset.models.factory import load_network

        self.started = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.net, self.card = load_network(model_dir, verify=True)  # refuses a missing / corrupt directory
        self.algorithm = Algorithm.from_card(self.card)
        self.data = data
        self.log = log
        self.split, self.items = scoring.first_split(self.card, data, limit=verify_images)
        self.images = [load_image(i.path) for i in self.items]
        self.masks = [load_mask(i.rle) for i in self.items]
        self.sample = self.algorithm.preprocess([self.images[0]])[0]  # 1 x C x H x W, a real preprocessed image
        self.staged: list[Path] = []

    @property
    def inputs(self) -> tuple:
        """The verification inputs of `asset.export.verify.compare`."""
        return self.split, self.items, self.images, self.masks

    def torch_infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(batch)).float().numpy()

    def network_shape(self) -> tuple[int, int]:
        return tuple(self.sample.shape[2:])

    def stage(self, name: str, directory: bool = False) -> Path:
        """A staged path, removed when the context closes unless installed before."""
        path = stage(self.model_dir, name, directory)
        self.staged.append(path)
        return path

    def install_and_record(self, key: str, staged: Path, *, facts: dict, figures: dict, versions: dict) -> dict:
        return install_and_record(self.model_dir, key, staged, facts=facts, figures=figures, versions=versions,
                                  started=self.started, log=self.log)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        for path in self.staged:
            remove(path)


def open_context(fmt: str, model_dir: Path, *, precision: str, data, options: dict, log) -> tuple[Context, dict]:
    """(Context, settings) for exporting `model_dir` to `fmt` from PyTorch, after checking this machine can."""
    require(fmt)
    opts = settings(options)
    ctx = Context(model_dir, data, int(opts["verify_images"]), log)
    key = modeldir.export_key(fmt, precision)
    log(f"exporting {model_dir} ({ctx.card['arch']}/{ctx.card['encoder']}) to {key}; verifying on "
        f"{len(ctx.images)} {ctx.split} images")
    return ctx, opts
