"""The model directory: self-describing, checksummed, written atomically (no torch here).

Layout of MODEL_DIR (format `defect-model/1`):

    model.json          the model card (see below)
    weights.pt          state_dict of the network (torch.save), loaded by `asset.models.load_network`
    SHA256SUMS          `<sha256>  <relative path>` for every file listed below, `sha256sum -c` compatible
    checkpoints/        last.ckpt, best.ckpt (Lightning) - for `asset train --resume`
    logs/               metrics.csv (CSV logger), TensorBoard event files, train.log
    config.yaml         the resolved training configuration
    exports/            (written by `asset export`, recorded in model.json "exports")
    evaluations/        (written by `asset evaluate`; not covered by the checksums)

model.json keys: format, created, arch, encoder, encoder_weights, classes, input{channels,
size_policy, normalisation, color_order, train_size (the network input size [H, W] of training; the server
bounds the cost of an image by it)}, thresholds{pixel, image, image_calibration}, dataset{name,
version, path, splits}, training{...}, metrics{split: {...}}, versions{library: version},
weights (file name), exports{name: {...}}.

Checksums cover every file except SHA256SUMS itself, the lock file `.lock`, `checkpoints/` (they change while a
run is resumed and are not needed to use the model), `evaluations/` and temporary files. `verify` refuses a
directory whose listed files are missing or differ, whose model.json has another format, or whose model.json names a
file (weights, config, an export and, for an export that is a directory, every file in it) that SHA256SUMS does not
cover: nothing is loaded unverified.
Writers call `record(...)` / `write_card(...)` / `install_export(...)`, which rewrite model.json and SHA256SUMS
atomically (temporary file, fsync, os.replace, fsync of the directory) while holding the directory's lock
(`locked`: fcntl.flock on MODEL_DIR/.lock, exclusive for writers); `verify` holds it shared where the lock file
exists, so a reader never sees an export installed and its checksum not yet written. Two writers (two concurrent
`asset export`) therefore take turns and both end recorded.

Re-exporting a format (`install_export`): the new file is verified before anything is touched, then, under the lock,
the directory as it stands is verified, the staged file (or directory) is fsynced and moved over the old one (a
directory is swapped with renameat2(RENAME_EXCHANGE) where the file system has it), and model.json and SHA256SUMS
are rewritten with the export's entries replaced. Until then the old export is what readers load and verify. A
crash between the move and the SHA256SUMS rename (two renames apart) leaves the export's checksum stale: `verify`
names the file; exporting that format again repairs it.

Every path read from model.json (weights, training.config, exports.*.file) or SHA256SUMS must stay inside the
directory: an absolute path, a `..` or a symlink leading out is refused (`inside`), so a crafted card cannot
make a reader open or hash /etc/passwd.

Exports (the contract between `asset export`, which writes them, and the backends / benchmark, which run them):
`EXPORT_KINDS` names every model.json "exports" key with the format that writes it, the backend that runs it, its
precision and its file. Runtime code reads exports through this table (`export_key_for`, `export_command`) and so
never imports the build-time `asset.export` package (torch, onnx, quantisation); `asset.export.formats` builds its
registry of formats on the same table.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from asset.errors import AssetError
from asset.files import TMP_PREFIX, fsync_dir, fsync_tree, sha256_file, write_json_atomic, write_text_atomic

FORMAT = "defect-model/1"
CARD = "model.json"
WEIGHTS = "weights.pt"
CHECKSUMS = "SHA256SUMS"
LOCK = ".lock"  # fcntl.flock'ed by writers (exclusive) and verify (shared); never checksummed
UNCHECKED_DIRS = ("checkpoints", "evaluations")


class ModelDirError(AssetError):
    """A model directory that cannot be used; the message says what is wrong and how to fix it."""


# ---------------------------------------------------------------------- exports: the contract
EXPORTS_DIR = "exports"
WEIGHTS_BACKENDS = ("pytorch",)  # backends that run weights.pt, not an export


@dataclass(frozen=True)
class ExportKind:
    """One model.json "exports" key: made by `asset export --format FORMAT [--precision P]`, run by BACKEND."""

    key: str  # model.json "exports" key
    format: str  # the `asset export --format` that writes it
    backend: str  # the backend that runs it
    precision: str
    file: str  # where it is written, relative to the model directory (recorded as exports[key].file)


def _kinds(*kinds: ExportKind) -> dict[str, ExportKind]:
    return {k.key: k for k in kinds}


# The first kind of a format is its default precision (tensorrt: fp16).
EXPORT_KINDS: dict[str, ExportKind] = _kinds(
    ExportKind("onnx", "onnx", "onnxruntime", "fp32", "exports/model.onnx"),
    ExportKind("onnx-int8", "onnx-int8", "onnxruntime", "int8", "exports/model-int8.onnx"),
    ExportKind("openvino", "openvino", "openvino", "fp32", "exports/openvino/model.xml"),
    *(ExportKind(f"tensorrt-{p}", "tensorrt", "tensorrt", p, f"exports/model-{p}.engine")
      for p in ("fp16", "fp32", "int8")),
)

# Other backends that read a kind's file too, after their own kind (OpenVINO compiles ONNX: fp32 falls back to the
# ONNX export when there is no IR, and int8 runs the onnx-int8 QDQ model, having no int8 export of its own; ONNX
# Runtime's CUDA and TensorRT execution providers run the ONNX files, fp16 being the TensorRT EP's over fp32).
ALSO_RUN_BY: dict[str, tuple[tuple[str, str], ...]] = {
    "onnx": (("openvino", "fp32"), ("onnxruntime-cuda", "fp32"), ("onnxruntime-tensorrt", "fp32"),
             ("onnxruntime-tensorrt", "fp16")),
    "onnx-int8": (("openvino", "int8"), ("onnxruntime-cuda", "int8"), ("onnxruntime-tensorrt", "int8")),
}


def export_kinds(fmt: str) -> list[ExportKind]:
    """The kinds format `fmt` writes, default precision first ([] for an unknown format)."""
    return [k for k in EXPORT_KINDS.values() if k.format == fmt]


def export_key(fmt: str, precision: str | None = None) -> str:
    """The model.json "exports" key of `fmt` at `precision` (None: the format's default): onnx, tensorrt-fp16, ..."""
    kinds = export_kinds(fmt)
    if not kinds:
        formats = ", ".join(dict.fromkeys(k.format for k in EXPORT_KINDS.values()))
        raise ModelDirError(f"unknown export format {fmt!r}; valid: {formats}")
    if precision is None:
        return kinds[0].key
    for k in kinds:
        if k.precision == precision:
            return k.key
    raise ModelDirError(f"export format {fmt!r} has no {precision} export; it has "
                        f"{', '.join(k.precision for k in kinds)}")


def export_keys_for(backend: str, precision: str) -> tuple[str, ...]:
    """The exports `backend` can run at `precision`, in the order it looks for them (() for weights.pt backends)."""
    if backend in WEIGHTS_BACKENDS:
        return ()
    own = [k.key for k in EXPORT_KINDS.values() if k.backend == backend and k.precision == precision]
    other = [key for key, users in ALSO_RUN_BY.items() if (backend, precision) in users and key in EXPORT_KINDS]
    keys = tuple(dict.fromkeys(own + other))
    if not keys:
        raise ModelDirError(f"no export runs on backend {backend!r} at {precision}: the exports are "
                            + ", ".join(f"{k.key} ({k.backend} {k.precision})" for k in EXPORT_KINDS.values()))
    return keys


def export_key_for(backend: str, precision: str) -> str | None:
    """The export `backend` runs at `precision` when the model directory has all of them; None = weights.pt."""
    keys = export_keys_for(backend, precision)
    return keys[0] if keys else None


def export_command(key: str, model_dir) -> str:
    """The command that makes export `key` of `model_dir` (for "not exported" messages)."""
    if key not in EXPORT_KINDS:
        raise ModelDirError(f"unknown export {key!r}; valid: {', '.join(EXPORT_KINDS)}")
    kind = EXPORT_KINDS[key]
    command = f"asset export --model {model_dir} --format {kind.format}"
    return command + (f" --precision {kind.precision}" if len(export_kinds(kind.format)) > 1 else "")


def find_export(card: dict, model_dir: Path, keys) -> tuple[str, dict, Path] | None:
    """(key, record, file) of the first of `keys` the card records, or None. The file is contained (`inside`) but
    may be missing: the caller says what to do about it."""
    exports = card.get("exports") or {}
    for key in keys:
        entry = exports.get(key)
        if isinstance(entry, dict) and entry.get("file"):
            return key, entry, inside(model_dir, entry["file"], f"model.json exports[{key!r}].file")
    return None


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------- the directory's lock
_held = threading.local()  # {resolved model dir: depth} of the locks this thread holds (re-entrant per thread)


@contextlib.contextmanager
def locked(model_dir: Path, exclusive: bool = True) -> Iterator[None]:
    """Hold MODEL_DIR/.lock: exclusive (writers: created if missing) or shared (readers: only where the file
    exists and opens, so a read-only mount of a directory never written by this version still reads).
    Re-entrant within a thread; two threads or processes take turns. flock, not fcntl record locks: a lock
    belongs to its open file, so closing another descriptor of the file does not drop it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no concurrent writers supported there
        yield
        return
    model_dir = Path(model_dir)
    key = str(model_dir.resolve())
    depth = getattr(_held, "dirs", None)
    if depth is None:
        depth = _held.dirs = {}
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    path = model_dir / LOCK
    try:
        if exclusive:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        else:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exclusive:
            raise ModelDirError(f"{model_dir}: cannot create its lock file {LOCK} ({exc.strerror}): the directory "
                                "must be writable to record an export") from None
        yield  # no lock file (never written by a locking writer) or not readable: nothing to wait for
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        depth[key] = 1
        try:
            yield
        finally:
            depth.pop(key, None)
    finally:
        os.close(fd)  # releases the flock


# ---------------------------------------------------------------------- containment
def inside(model_dir: Path, rel, what: str) -> Path:
    """model_dir / rel, refused (ModelDirError) unless it stays inside model_dir: `rel` must be a relative path
    without `..`, and must not resolve (symlinks followed) to somewhere outside the directory."""
    model_dir = Path(model_dir)
    if not isinstance(rel, str) or not rel.strip():
        raise ModelDirError(f"{model_dir}: {what} is {rel!r}, not a relative file path")
    posix, windows = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or rel.startswith("\\") \
            or ".." in posix.parts or ".." in windows.parts:
        raise ModelDirError(f"{model_dir}: {what} names {rel!r}, a path outside the model directory; refused "
                            "(paths in a model directory are relative and stay inside it: was it tampered with?)")
    path = model_dir / rel
    root = model_dir.resolve()
    target = path.resolve()
    if target != root and root not in target.parents:
        raise ModelDirError(f"{model_dir}: {what} {rel!r} is a link to {target}, outside the model directory; refused")
    return path


def card_paths(card: dict) -> list[tuple[str, str]]:
    """(what, relative path) for every file the card names."""
    out = [("model.json weights", card.get("weights", WEIGHTS))]
    training = card.get("training")
    if isinstance(training, dict) and "config" in training:
        out.append(("model.json training.config", training["config"]))
    exports = card.get("exports")
    if isinstance(exports, dict):
        for key, entry in exports.items():
            if isinstance(entry, dict) and "file" in entry:
                out.append((f"model.json exports[{key!r}].file", entry["file"]))
    return out


# ---------------------------------------------------------------------- checksums
def checked_files(model_dir: Path) -> list[str]:
    """Relative paths (POSIX) that SHA256SUMS covers, sorted."""
    model_dir = Path(model_dir)
    out = []
    for p in sorted(model_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(model_dir)
        if rel.as_posix() in (CHECKSUMS, LOCK) or rel.parts[0] in UNCHECKED_DIRS or any(
            part.startswith(TMP_PREFIX) for part in rel.parts
        ):
            continue
        out.append(rel.as_posix())
    return out


def compute_checksums(model_dir: Path) -> dict[str, str]:
    return {rel: sha256_file(Path(model_dir) / rel) for rel in checked_files(model_dir)}


def write_checksums(model_dir: Path, sums: dict[str, str] | None = None) -> dict[str, str]:
    """Write SHA256SUMS: `sums` as given, else computed over the whole directory."""
    sums = compute_checksums(model_dir) if sums is None else dict(sorted(sums.items()))
    write_text_atomic(Path(model_dir) / CHECKSUMS, "".join(f"{h}  {rel}\n" for rel, h in sums.items()))
    return sums


def read_checksums(model_dir: Path) -> dict[str, str]:
    path = Path(model_dir) / CHECKSUMS
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise ModelDirError(f"{model_dir}: no {CHECKSUMS} file: not a finished model directory "
                            "(train it to the end, or resume it with `asset train --resume`)") from None
    sums = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ModelDirError(f"{path}:{n}: malformed line (expected '<sha256>  <path>')")
        rel = parts[1].strip().lstrip("*")
        inside(model_dir, rel, f"{CHECKSUMS} line {n}")
        sums[rel] = parts[0].lower()
    return sums


# ---------------------------------------------------------------------- card
def card_path(model_dir: Path) -> Path:
    return Path(model_dir) / CARD


def read_card_unverified(model_dir: Path) -> dict:
    """model.json as a dict, format-checked but without checking the checksums."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: no such model directory")
    path = card_path(model_dir)
    try:
        card = json.loads(path.read_text())
    except OSError:
        raise ModelDirError(f"{model_dir}: no {CARD}: not a model directory made by `asset train`") from None
    except ValueError as exc:
        raise ModelDirError(f"{path}: not valid JSON ({exc})") from None
    fmt = card.get("format") if isinstance(card, dict) else None
    if fmt != FORMAT:
        raise ModelDirError(
            f"{path}: model format {fmt!r}, this asset reads {FORMAT!r}: the directory was made by another "
            "version of the asset; retrain the model with this version (or use the asset version that made it)"
        )
    for what, rel in card_paths(card):
        inside(model_dir, rel, what)
    return card


def export_files(model_dir: Path, rel: str) -> list[str]:
    """The files an export recorded as `rel` consists of: the file, and for an export that is a directory of its
    own under exports/ (OpenVINO: model.xml + model.bin) every file in that directory (temporary files aside)."""
    parent = PurePosixPath(rel).parent
    if parent.as_posix() in (".", EXPORTS_DIR) or parent.parts[:1] != (EXPORTS_DIR,):
        return [rel]
    d = Path(model_dir) / parent
    found = [p.relative_to(model_dir).as_posix() for p in sorted(d.rglob("*"))
             if p.is_file() and not any(part.startswith(TMP_PREFIX) for part in p.relative_to(d).parts)] \
        if d.is_dir() else []
    return sorted(set(found) | {rel})


def required_files(model_dir: Path, card: dict) -> list[str]:
    """Every file the card makes a reader load, which SHA256SUMS must therefore cover."""
    out = [CARD]
    for what, rel in card_paths(card):
        out.extend(export_files(model_dir, rel) if what.startswith("model.json exports") else [rel])
    return list(dict.fromkeys(out))


def verify(model_dir: Path) -> dict:
    """Check format and checksums; returns the card. Raises ModelDirError naming the bad files."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: no such model directory")
    with locked(model_dir, exclusive=False):
        return _verify(model_dir)


def _verify(model_dir: Path) -> dict:
    card = read_card_unverified(model_dir)
    sums = read_checksums(model_dir)
    missing_entries = [r for r in required_files(model_dir, card) if r not in sums]
    if missing_entries:
        raise ModelDirError(
            f"{model_dir}: {CHECKSUMS} does not cover {missing_entries}, which model.json names: refused rather than "
            "loaded unverified (a file added or an export recorded by hand, or an interrupted write; export that "
            "format again, or restore the directory from a backup)")
    bad, missing = [], []
    for rel, expected in sums.items():
        p = model_dir / rel
        if not p.is_file():
            missing.append(rel)
        elif sha256_file(p) != expected:
            bad.append(rel)
    if missing or bad:
        what = "; ".join(filter(None, [f"missing: {missing}" if missing else "", f"changed: {bad}" if bad else ""]))
        raise ModelDirError(
            f"{model_dir}: checksums do not match ({what}). The directory was modified or is incomplete: "
            "restore it from a backup or retrain"
        )
    return card


def write_card(model_dir: Path, card: dict) -> None:
    """Write model.json (atomically) and rewrite SHA256SUMS over the directory, under the directory's lock."""
    card = dict(card)
    card["format"] = FORMAT
    with locked(model_dir):
        write_json_atomic(card_path(model_dir), card)
        write_checksums(model_dir)


def record(model_dir: Path, section: str, value, key: str | None = None, verify_first: bool = True) -> dict:
    """Record `value` into model.json (card[section] = value, or card[section][key] = value), then rewrite
    the checksums (covering any new files, e.g. an export written beside). Returns the new card. The read, the
    change and the write happen under the directory's lock: two concurrent records both end in model.json.

    Example: record(d, "exports", {"file": "exports/model.onnx", "opset": 17}, key="onnx")."""
    with locked(model_dir):
        card = verify(model_dir) if verify_first else read_card_unverified(model_dir)
        if key is None:
            card[section] = value
        else:
            sub = card.get(section)
            if not isinstance(sub, dict):
                sub = {}
            sub[key] = value
            card[section] = sub
        write_card(model_dir, card)
    return card


# ---------------------------------------------------------------------- installing an export
_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system or file system has
    no such call (the caller then moves them one after the other)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _move_into_place(staged: Path, target: Path) -> None:
    """os.replace for a file; for a directory, swap it with the old one (atomically where possible), then remove
    the old one. The parent directory is fsynced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if staged.is_dir() and target.exists():
        if _exchange(staged, target):
            old = staged  # now holds the old export
        else:
            old = target.with_name(f"{TMP_PREFIX}old-{target.name}")
            _remove(old)
            os.replace(target, old)
            os.replace(staged, target)
        fsync_dir(target.parent)
        _remove(old)
    else:
        os.replace(staged, target)
    fsync_dir(target.parent)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def install_export(model_dir: Path, key: str, staged: Path, entry: dict) -> dict:
    """Install the verified `staged` file (or directory, which becomes the directory of the export's file) as
    export `key` and record `entry` as model.json exports[key]; returns the new card.

    Under the directory's exclusive lock: the directory as it stands is verified (nothing is touched if it is
    already bad), the staged export is fsynced and moved over the old one, then model.json and SHA256SUMS are
    rewritten, the export's old checksums replaced by the new files' and every other entry kept as verified."""
    model_dir, staged = Path(model_dir), Path(staged)
    if key not in EXPORT_KINDS:
        raise ModelDirError(f"unknown export {key!r}; valid: {', '.join(EXPORT_KINDS)}")
    rel = entry.get("file") or EXPORT_KINDS[key].file
    is_dir = staged.is_dir()
    target_rel = PurePosixPath(rel).parent.as_posix() if is_dir else rel
    if is_dir and PurePosixPath(target_rel).parts[:1] != (EXPORTS_DIR,) or target_rel == EXPORTS_DIR:
        raise ModelDirError(f"export {key!r}: a staged directory installs as a directory of its own under "
                            f"{EXPORTS_DIR}/, not as {target_rel!r}")
    target = inside(model_dir, target_rel, f"export {key!r}")
    if is_dir and not (staged / PurePosixPath(rel).name).is_file():
        raise ModelDirError(f"staged export {staged} has no {PurePosixPath(rel).name}")
    with locked(model_dir):
        card = verify(model_dir)
        sums = read_checksums(model_dir)
        old = (card.get("exports") or {}).get(key)
        dropped = {rel, target_rel}
        if isinstance(old, dict) and isinstance(old.get("file"), str):
            dropped.update(export_files(model_dir, old["file"]))
        fsync_tree(staged)
        _move_into_place(staged, target)
        sums = {r: h for r, h in sums.items()
                if r not in dropped and not (is_dir and r.startswith(target_rel + "/"))}
        for f in export_files(model_dir, rel):
            sums[f] = sha256_file(model_dir / f)
        exports = card.get("exports") if isinstance(card.get("exports"), dict) else {}
        card["exports"] = {**exports, key: entry}
        card["format"] = FORMAT
        write_json_atomic(card_path(model_dir), card)
        sums[CARD] = sha256_file(card_path(model_dir))
        write_checksums(model_dir, sums)
    return card
