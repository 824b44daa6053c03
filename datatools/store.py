"""The on-disk store: ROOT/NAME/VERSION/ directories, the `latest` link and named tags.

Tags (and `latest`) are relative symlinks beside the versions, so `ROOT/NAME/paper-2022` is a
dataset directory like any other for every consumer.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from datatools.errors import DatasetError

VERSION_RE = re.compile(r"^[0-9a-f]{12}$")
TAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
TMP_PREFIX = ".tmp-"
LATEST = "latest"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in directory `path` durable (no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def point_link(link: Path, target: str) -> None:
    """Create or move a relative symlink atomically (write a new link under a unique name, rename over the old,
    fsync the directory). The temporary name is random, not the PID: every containerised run is PID 1, and two
    of them on one store would share (and remove) each other's temporary link."""
    link = Path(link)
    while True:
        tmp = link.with_name(f"{TMP_PREFIX}{link.name}.{uuid.uuid4().hex}")
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def new_staging_dir(name_dir: Path) -> tuple[Path, int]:
    """Create NAME/.tmp-PID-XXXXXXXX and hold an exclusive flock on it; return it and the lock's fd.

    The lock, not the PID in the name, is what marks the folder as live: the kernel drops it when
    the process dies however it dies, and a PID says nothing in a container where every run is
    PID 1. Keep the fd open until the folder is renamed into place or removed, then close it.
    """
    while True:
        staging = Path(name_dir) / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            fd = os.open(staging, _DIR_FLAGS)
        except FileNotFoundError:  # a concurrent cleaner saw it unlocked and removed it: try again
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(staging, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return staging, fd
        except FileNotFoundError:
            pass
        os.close(fd)  # removed between mkdir and flock: try again under a new name


def remove_stale_staging(name_dir: Path) -> list[Path]:
    """Remove NAME/.tmp-* folders whose lock nobody holds (left by a killed run); return them.

    A folder whose lock is held belongs to a live conversion and is left alone. Where the file
    system has no flock (some network mounts) nothing is removed.
    """
    removed = []
    for entry in Path(name_dir).glob(f"{TMP_PREFIX}*"):
        if entry.is_symlink() or not entry.is_dir():
            continue  # point_link's temporary links are symlinks
        try:
            fd = os.open(entry, _DIR_FLAGS)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(entry, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        except OSError:  # held by a live run (EWOULDBLOCK), renamed meanwhile, or no flock here
            pass
        finally:
            os.close(fd)
    return removed


def resolve_version_dir(path: Path) -> Path:
    """A version directory, a tag or `latest` link -> the real version directory."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset directory")
    real = path.resolve()
    if not (real / "dataset.json").is_file():
        raise DatasetError(f"{path}: not a dataset version directory (no dataset.json inside)")
    return real


def tag_version(version_dir: Path, tag: str) -> Path:
    """Name a version: ROOT/NAME/TAG -> VERSION."""
    real = resolve_version_dir(version_dir)
    if not TAG_RE.match(tag) or VERSION_RE.match(tag) or tag == LATEST:
        raise DatasetError(
            f"invalid tag {tag!r}: use letters, digits, '.', '_' or '-', starting with a letter; "
            f"'{LATEST}' and 12-hex-digit names are reserved"
        )
    link = real.parent / tag
    if link.exists() and not link.is_symlink():
        raise DatasetError(f"{link}: exists and is not a tag link")
    point_link(link, real.name)
    return link


@dataclass
class VersionInfo:
    name: str
    version: str
    path: Path
    tags: list[str]
    splits: dict


def list_store(root: Path) -> list[VersionInfo]:
    """Every dataset version under ROOT, with its tags and per-split counts."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset root")
    found: list[VersionInfo] = []
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        links: dict[str, list[str]] = {}
        for entry in name_dir.iterdir():
            if entry.is_symlink():
                links.setdefault(os.readlink(entry), []).append(entry.name)
        for version_dir in sorted(name_dir.iterdir()):
            if version_dir.is_symlink() or not VERSION_RE.match(version_dir.name):
                continue
            try:
                meta = json.loads((version_dir / "dataset.json").read_text())
            except (OSError, ValueError):
                continue
            found.append(
                VersionInfo(
                    name=name_dir.name,
                    version=version_dir.name,
                    path=version_dir,
                    tags=sorted(links.get(version_dir.name, [])),
                    splits=meta.get("splits", {}),
                )
            )
    return found
