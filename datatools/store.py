"""The on-disk store: ROOT/NAME/VERSION/ directories, the `latest` link and named tags.

Tags (and `latest`) are relative symlinks beside the versions, so `ROOT/NAME/paper-2022` is a
dataset directory like any other for every consumer.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from datatools.errors import DatasetError

VERSION_RE = re.compile(r"^[0-9a-f]{12}$")
TAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
TMP_PREFIX = ".tmp-"
LATEST = "latest"


def point_link(link: Path, target: str) -> None:
    """Create or move a relative symlink atomically (write a new link, rename over the old)."""
    tmp = link.with_name(f"{TMP_PREFIX}{link.name}.{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


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
