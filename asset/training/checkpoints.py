"""Checkpoints that are checksummed when written and verified, then loaded as data only, when read.

`asset train --resume DIR` reads DIR/checkpoints/last.ckpt, a file anyone could have put there. A pickle can
run code while it loads, so:

- every checkpoint is written through `ChecksummedCheckpointIO` (Lightning's CheckpointIO), which records its
  SHA-256 in `checkpoints/SHA256SUMS` (`sha256sum -c` format; a new hash is added before the file is replaced
  and the old one dropped after, so a run killed at any moment leaves a file its SHA256SUMS accepts);
- before anything is loaded, the file must match that record (`verify_checkpoint`), and it is loaded with
  `torch.load(weights_only=True)`: tensors and plain containers only, never a pickled callable. A Lightning
  checkpoint of this asset needs no extra safe globals (`SAFE_GLOBALS`, kept as the one place to add one).

The checksums are integrity, not authenticity: whoever can write the checkpoint can write SHA256SUMS too. The
protection against code in a foreign checkpoint is weights_only; the checksums catch a checkpoint changed,
truncated or swapped behind the run's back.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

from asset import files
from asset.errors import AssetError

CHECKSUMS = "SHA256SUMS"
SAFE_GLOBALS: list = []  # what torch.load(weights_only=True) must accept beyond tensors and containers: none


class CheckpointError(AssetError, RuntimeError):
    """A checkpoint that is refused; the message says why and what to do."""


def _read_sums(directory: Path) -> list[tuple[str, str]]:
    path = directory / CHECKSUMS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            out.append((parts[1].strip(), parts[0].lower()))
    return out


def _write_sums(directory: Path, entries: list[tuple[str, str]]) -> None:
    files.write_text_atomic(directory / CHECKSUMS, "".join(f"{h}  {name}\n" for name, h in entries))


def record_and_write(path: Path, data: bytes) -> None:
    """Write a checkpoint file atomically with its checksum recorded (old and new hash while it is replaced)."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    entries = _read_sums(directory)
    _write_sums(directory, entries + [(path.name, digest)])  # both hashes valid while the file is replaced
    files.write_bytes_atomic(path, data)
    _write_sums(directory, [e for e in entries if e[0] != path.name] + [(path.name, digest)])


def forget(path: Path) -> None:
    path = Path(path)
    path.unlink(missing_ok=True)
    entries = _read_sums(path.parent)
    if any(name == path.name for name, _ in entries):
        _write_sums(path.parent, [e for e in entries if e[0] != path.name])


def verify_checkpoint(path: Path) -> None:
    """Refuse a checkpoint that its directory's SHA256SUMS does not list with this very content."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_symlink():
        raise CheckpointError(f"{path}: is a symbolic link; a checkpoint must be a plain file written by the run")
    known = [h for name, h in _read_sums(path.parent) if name == path.name]
    if not known:
        raise CheckpointError(
            f"{path}: not listed in {path.parent / CHECKSUMS}, so it cannot be verified: it was not written by "
            "this version of `asset train` (or the list was removed). Refused; start the run again without --resume")
    if files.sha256_file(path) not in known:
        raise CheckpointError(
            f"{path}: its SHA-256 does not match {path.parent / CHECKSUMS}: the checkpoint was modified or damaged "
            "after the run wrote it. Refused, nothing was loaded; start the run again without --resume")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Verify, then load as data only (weights_only=True); a checkpoint holding code is refused, not run."""
    import torch

    verify_checkpoint(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: holds objects other than tensors and plain data, which could run code when loaded; refused, "
            f"nothing was executed ({first})") from None


def checkpoint_io():
    """A Lightning CheckpointIO writing through `record_and_write` and reading through `load_checkpoint`."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class ChecksummedCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            import torch

            if storage_options is not None:
                raise TypeError("storage_options are not supported by the asset's checkpoint writer")
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            record_and_write(Path(path), buf.getvalue())

        def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
            return load_checkpoint(Path(path), map_location=map_location or "cpu")

        def remove_checkpoint(self, path) -> None:
            forget(Path(path))

    return ChecksummedCheckpointIO()
