#!/usr/bin/env python3
"""An offline wheelhouse for an image, made on the host the way air-gapped sites do it.

`pip download --only-binary=:all:` for the image's platform and Python fetches every wheel the
image's hash lock lists (ci/lock.py; each wheel checked against its SHA-256, build backend included),
or a requirement file needs; the Dockerfiles install from it with `pip install --no-index
--require-hashes` when they are given one. Proves, as a side effect, that every
requirement has a wheel for that platform: a missing one fails here, with pip's message.

The wheelhouse is cached in $DEFECT_CI_CACHE/wheels (default ~/.cache/defect-ci) under a key of
platform, Python and requirement files. `--image TAG` also packs it into a `FROM scratch` image,
which the Dockerfiles mount (`--build-arg WHEELS=TAG`; BuildKit, no copy into any layer).

    python ci/wheelhouse.py --platform linux/arm64 -r platforms/rpi4/requirements.lock --image defect/wheels:rpi4
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCKER = "/usr/bin/docker"
# Our packages (datatools, asset) build with setuptools; offline builds need it in the wheelhouse.
BUILD_REQUIREMENTS = ["setuptools==84.2.1"]
MACHINES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
# Debian bookworm and Ubuntu 24.04 have glibc >= 2.36: every manylinux wheel up to 2_36 runs there.
# pip does not widen a --platform list by itself, so the compatible tags are listed.
GLIBC_MINOR_MAX = 36


def platform_tags(platform: str) -> list[str]:
    machine = MACHINES.get(platform)
    if not machine:
        raise SystemExit(f"wheelhouse: unknown platform {platform!r} (one of {', '.join(MACHINES)})")
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR_MAX, 16, -1)]
    return tags + [f"manylinux2014_{machine}"]


def cache_dir() -> Path:
    return Path(os.environ.get("DEFECT_CI_CACHE") or Path.home() / ".cache/defect-ci") / "wheels"


def key(platform: str, python: str, requirements: list[Path]) -> str:
    digest = hashlib.sha256(f"{platform} {python} {BUILD_REQUIREMENTS}".encode())
    for path in requirements:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def download(platform: str, python: str, requirements: list[Path], dest: Path | None = None) -> Path:
    """Download every wheel into a cached folder (renamed into place when complete); returns it."""
    missing = [str(p) for p in requirements if not p.is_file()]
    if missing:
        raise SystemExit(f"wheelhouse: no such requirements file: {', '.join(missing)}")
    name = f"{platform.replace('/', '-')}-py{python}-{key(platform, python, requirements)}"
    folder = dest or cache_dir() / name
    if (folder / ".complete").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    abi = "cp" + python.replace(".", "")
    # A hash lock (ci/lock.py) lists every package with its wheels' SHA-256, build backend included: pip checks
    # each download against it, so the wheelhouse holds exactly what PyPI published
    locked = all(p.suffix == ".lock" for p in requirements)
    extra = ["--require-hashes", "--no-deps"] if locked else BUILD_REQUIREMENTS
    # --no-cache-dir: the wheelhouse is the cache; pip's HTTP cache would hold every wheel a second time
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-cache-dir",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", python, "--abi", abi,
           *[arg for tag in platform_tags(platform) for arg in ("--platform", tag)],
           "-d", str(staging), *extra, *[arg for p in requirements for arg in ("-r", str(p))]]
    print(f"wheelhouse: downloading wheels for {platform}, Python {python} -> {folder}", file=sys.stderr, flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"wheelhouse: pip download failed for {platform} / Python {python} (see above)")
    (staging / ".complete").write_text("\n".join(str(p) for p in requirements) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def pack(folder: Path, tag: str, env: dict[str, str] | None = None, platform: str = "linux/amd64") -> str:
    """A FROM-scratch image holding the wheels at /, for `--build-arg WHEELS=tag` (cached by tag).

    Labelled with the platform of the image it is for: a build for linux/arm64 looks for an arm64
    `wheels` stage and would try to pull anything else."""
    env = {**(env or os.environ), "DOCKER_BUILDKIT": "1"}
    if subprocess.run([DOCKER, "image", "inspect", tag], env=env, capture_output=True).returncode == 0:
        return tag
    dockerfile = "FROM scratch\nCOPY *.whl /\n"
    result = subprocess.run([DOCKER, "build", "-q", "--platform", platform, "-t", tag, "-f", "-", str(folder)],
                            input=dockerfile, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"wheelhouse: packing {folder} as {tag} failed:\n{result.stderr[-3000:]}")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", default="linux/amd64", choices=sorted(MACHINES))
    parser.add_argument("--python", default="3.11", help="the image's Python (major.minor)")
    parser.add_argument("-r", "--requirement", action="append", type=Path, required=True, dest="requirements")
    parser.add_argument("--out", type=Path, help="folder to fill (default: the cache)")
    parser.add_argument("--image", help="also pack the wheels as this image (for --build-arg WHEELS=...)")
    args = parser.parse_args(argv)
    folder = download(args.platform, args.python, args.requirements, args.out)
    print(folder)
    if args.image:
        print(pack(folder, args.image, platform=args.platform))
    return 0


if __name__ == "__main__":
    sys.exit(main())
