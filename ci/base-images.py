#!/usr/bin/env python3
"""Local stand-ins for the public base images, for tests on machines that cannot pull anything.

Every Dockerfile takes its base as a build ARG with the public default (python:3.11-slim, ...).
Where no registry is reachable, the tests pass these instead: Debian bookworm minbase with
Python 3.11 (python3, python3-venv, ca-certificates) made by debootstrap, for amd64 and for arm64
(under QEMU), with a virtual environment first on PATH so `python` and `pip` behave as in the
official python images. The root filesystems are cached as tarballs in $DEFECT_CI_CACHE
(default ~/.cache/defect-ci), so a second run only re-imports them. Test tooling, never a default.

    python3 ci/base-images.py amd64 arm64     # prints one line per arch: ARCH TAG
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DOCKER = "/usr/bin/docker"
SUITE = "bookworm"
MIRROR = os.environ.get("DEFECT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ["python3", "python3-venv", "ca-certificates"]
VENV = "/opt/python"
# Changing how the rootfs is made changes the cache key, so a stale tarball is never reused.
RECIPE = f"{SUITE} {MIRROR} {','.join(PACKAGES)} venv={VENV} v1"
ARCHES = ("amd64", "arm64")


def cache_dir() -> Path:
    return Path(os.environ.get("DEFECT_CI_CACHE") or Path.home() / ".cache/defect-ci")


def tag_for(arch: str) -> str:
    digest = hashlib.sha256(RECIPE.encode()).hexdigest()[:8]
    return f"defect-ci/base:{SUITE}-py3.11-{arch}-{digest}"


def log(message: str) -> None:
    print(f"base-images: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"base-images: {' '.join(cmd[:4])} ... failed ({result.returncode}):\n"
                         f"{result.stdout[-3000:]}{result.stderr[-3000:]}")


def rootfs_tarball(arch: str) -> Path:
    """debootstrap the rootfs once per recipe and arch; the tarball is renamed into the cache."""
    digest = hashlib.sha256(RECIPE.encode()).hexdigest()[:8]
    tarball = cache_dir() / f"rootfs-{SUITE}-{arch}-{digest}.tar"
    if tarball.exists():
        return tarball
    if os.geteuid() != 0:
        raise SystemExit("base-images: debootstrap needs root")
    for tool in ("debootstrap", "tar"):
        if not shutil.which(tool):
            raise SystemExit(f"base-images: {tool} is missing (python3 ci/engine.py install)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    # One debootstrap per arch at a time, across processes: a second caller waits, then reuses it.
    with open(tarball.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        return _debootstrap(arch, tarball)


def _debootstrap(arch: str, tarball: Path) -> Path:
    if arch == "arm64" and os.uname().machine != "aarch64" and not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        raise SystemExit("base-images: arm64 needs QEMU emulation: python3 ci/engine.py binfmt")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"rootfs-{arch}-", dir=tarball.parent) as tmp:
        root = Path(tmp) / "root"
        log(f"debootstrap {SUITE} {arch} (a few minutes; cached afterwards in {tarball.parent})")
        run(["debootstrap", "--variant=minbase", f"--arch={arch}", f"--include={','.join(PACKAGES)}",
             SUITE, str(root), MIRROR])
        # The venv is made inside the rootfs (under QEMU for arm64) so pip works like in python:3.11-slim.
        run(["chroot", str(root), "python3", "-m", "venv", VENV])
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        partial = Path(tmp) / "rootfs.tar"
        run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."])
        partial.rename(tarball)
    log(f"{arch} rootfs ready in {time.monotonic() - started:.0f} s: {tarball}")
    return tarball


def image_exists(tag: str, env: dict[str, str]) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", tag], env=env, capture_output=True).returncode == 0


def build_image(arch: str, env: dict[str, str] | None = None) -> str:
    """Import the rootfs as an image labelled with its architecture (classic builder: FROM scratch + ADD)."""
    env = env or dict(os.environ)
    tag = tag_for(arch)
    if image_exists(tag, env):
        return tag
    tarball = rootfs_tarball(arch)
    with tempfile.TemporaryDirectory(prefix="base-ctx-") as ctx:
        if _same_fs(tarball, ctx):
            os.link(tarball, Path(ctx) / "rootfs.tar")
        else:
            shutil.copy(tarball, Path(ctx) / "rootfs.tar")
        (Path(ctx) / "Dockerfile").write_text(
            "FROM scratch\nADD rootfs.tar /\n"
            f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8\n"
            'CMD ["python3"]\n')
        # `docker import` would label it amd64 whatever the rootfs is; the classic builder honours --platform.
        run([DOCKER, "build", "--platform", f"linux/{arch}", "-t", tag, ctx],
            env={**env, "DOCKER_BUILDKIT": "0"})
    log(f"image {tag}")
    return tag


def _same_fs(path: Path, folder: str) -> bool:
    return os.stat(path).st_dev == os.stat(folder).st_dev


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arches", nargs="*", default=list(ARCHES), choices=ARCHES)
    args = parser.parse_args(argv)
    # The two debootstraps overlap (one downloads while the other runs under QEMU).
    with ThreadPoolExecutor(max_workers=len(args.arches)) as pool:
        tags = list(pool.map(build_image, args.arches))
    for arch, tag in zip(args.arches, tags):
        print(f"{arch} {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
