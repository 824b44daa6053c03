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
size_policy, normalisation, color_order}, thresholds{pixel, image, image_calibration}, dataset{name,
version, path, splits}, training{...}, metrics{split: {...}}, versions{library: version},
weights (file name), exports{name: {...}}.

Checksums cover every file except SHA256SUMS itself, `checkpoints/` (they change while a run is
resumed and are not needed to use the model), `evaluations/` and temporary files. `verify` refuses
a directory whose listed files are missing or differ, or whose model.json has another format.
Writers call `record(...)` / `write_card(...)`, which rewrite model.json and SHA256SUMS atomically.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path

FORMAT = "defect-model/1"
CARD = "model.json"
WEIGHTS = "weights.pt"
CHECKSUMS = "SHA256SUMS"
UNCHECKED_DIRS = ("checkpoints", "evaluations")
TMP_PREFIX = ".tmp-"


class ModelDirError(Exception):
    """A model directory that cannot be used; the message says what is wrong and how to fix it."""


# ---------------------------------------------------------------------- atomic writes
def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------- checksums
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checked_files(model_dir: Path) -> list[str]:
    """Relative paths (POSIX) that SHA256SUMS covers, sorted."""
    model_dir = Path(model_dir)
    out = []
    for p in sorted(model_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(model_dir)
        if rel.as_posix() == CHECKSUMS or rel.parts[0] in UNCHECKED_DIRS or any(
            part.startswith(TMP_PREFIX) for part in rel.parts
        ):
            continue
        out.append(rel.as_posix())
    return out


def compute_checksums(model_dir: Path) -> dict[str, str]:
    return {rel: sha256_file(Path(model_dir) / rel) for rel in checked_files(model_dir)}


def write_checksums(model_dir: Path) -> dict[str, str]:
    sums = compute_checksums(model_dir)
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
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()
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
    return card


def verify(model_dir: Path) -> dict:
    """Check format and checksums; returns the card. Raises ModelDirError naming the bad files."""
    model_dir = Path(model_dir)
    card = read_card_unverified(model_dir)
    sums = read_checksums(model_dir)
    required = [CARD, card.get("weights", WEIGHTS)]
    missing_entries = [r for r in required if r not in sums]
    if missing_entries:
        raise ModelDirError(f"{model_dir}: {CHECKSUMS} does not cover {missing_entries}")
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
    """Write model.json (atomically) and rewrite SHA256SUMS over the directory."""
    card = dict(card)
    card["format"] = FORMAT
    write_json_atomic(card_path(model_dir), card)
    write_checksums(model_dir)


def record(model_dir: Path, section: str, value, key: str | None = None, verify_first: bool = True) -> dict:
    """Record `value` into model.json (card[section] = value, or card[section][key] = value), then rewrite
    the checksums (covering any new files, e.g. an export written beside). Returns the new card.

    Example: record(d, "exports", {"file": "exports/model.onnx", "opset": 17}, key="onnx")."""
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
