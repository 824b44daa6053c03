#!/usr/bin/env python3
"""Hash-locked requirements for every image: what each Dockerfile installs with `pip install --require-hashes`.

The requirement files (`requirements*.txt`) pin the versions we chose; a lock adds every dependency they pull in
and the SHA-256 of the exact wheel each platform of the image installs, as PyPI publishes it. pip then refuses any
file whose hash differs, from the index or from an offline wheelhouse (ci/wheelhouse.py downloads from the lock
too): a replaced or tampered wheel fails the build instead of shipping.

    python3 ci/lock.py            # resolve every lock against PyPI (pip's resolver, wheel metadata only)
    python3 ci/lock.py --check    # offline: every lock was made from today's requirement files (tests run this)

Run it after changing a requirement file (`make lock`). Each lock names its sources and their SHA-256, so a
requirement changed without a new lock is caught by `--check`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wheelhouse  # noqa: E402  (ci/ is not a package: these run as plain scripts on bare runners)

REPO = Path(__file__).resolve().parent.parent
INDEX = "https://pypi.org/simple"
# lock -> the requirement files its Dockerfile installed before, and the (platform, Python) of each image built
# from it. Our own packages are built with --no-build-isolation: their build backend is locked with them.
# Not locked: platforms/x86-cuda. Its tensorrt-cu12 is a source distribution whose setup.py installs NVIDIA's
# TensorRT wheels from NVIDIA's own index at install time, out of reach of pip's hash check (and of this machine).
LOCKS: dict[str, dict] = {
    "datatools/requirements.lock": {"requirements": ["datatools/requirements.txt"],
                                    "targets": [("linux/amd64", "3.11"), ("linux/arm64", "3.11")]},
    "asset/requirements.lock": {"requirements": ["datatools/requirements.txt", "asset/requirements.txt"],
                                "targets": [("linux/amd64", "3.11")]},
    "platforms/x86-cpu/requirements.lock": {
        "requirements": ["asset/requirements-runtime.txt", "platforms/x86-cpu/requirements-openvino.txt"],
        "targets": [("linux/amd64", "3.11")]},
    "platforms/rpi4/requirements.lock": {"requirements": ["asset/requirements-runtime.txt"],
                                         "targets": [("linux/arm64", "3.11")]},
    "platforms/jetson/requirements.lock": {
        "requirements": ["asset/requirements-runtime.txt", "platforms/jetson/requirements-jetson.txt"],
        # JetPack 7's Python 3.12, and 3.11 for the other arm64 bases the Dockerfile takes (the tests' stand-in)
        "targets": [("linux/arm64", "3.12"), ("linux/arm64", "3.11")]},
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#\\]+)")
SOURCE = re.compile(r"^# source: (\S+) sha256=([0-9a-f]{64})$")


class LockError(Exception):
    pass


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of the `name==version` lines of a requirement or lock file, following -r."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith(("-r ", "--requirement ")):
            found.update(pins(path.parent / line.split(maxsplit=1)[1]))
        elif m := PIN.match(line):
            found[canonical(m[1])] = m[2]
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources(requirements: list[str]) -> list[Path]:
    """The requirement files and the ones they include (-r), in order, each once."""
    out: list[Path] = []
    for rel in requirements:
        path = REPO / rel
        for line in path.read_text().splitlines():
            if line.strip().startswith(("-r ", "--requirement ")):
                out += [p for p in _sources([str((path.parent / line.split(maxsplit=1)[1]).relative_to(REPO))])
                        if p not in out]
        if path not in out:
            out.append(path)
    return out


def resolve(requirements: list[str], platform: str, python: str) -> dict[str, tuple[str, str]]:
    """{canonical name: (version, sha256)} of every wheel pip installs for these requirements on that platform:
    pip's own resolver, against PyPI only (no local mirrors or find-links), wheel metadata only (no download)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # the machine's pip.conf (mirrors, constraints) is not what users get
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--index-url", INDEX, "--report", str(report),
               "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
               "--abi", "cp" + python.replace(".", ""), "--target", str(Path(tmp) / "target"),
               *[arg for tag in wheelhouse.platform_tags(platform) for arg in ("--platform", tag)],
               *wheelhouse.BUILD_REQUIREMENTS, *[arg for r in requirements for arg in ("-r", str(REPO / r))]]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise LockError(f"pip could not resolve {', '.join(requirements)} for {platform} / Python {python}:\n"
                            f"{result.stderr[-3000:]}")
        installs = json.loads(report.read_text())["install"]
    out = {}
    for item in installs:
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise LockError(f"{item['metadata']['name']}: the index gave no SHA-256 for {item['download_info']['url']}")
        out[canonical(item["metadata"]["name"])] = (item["metadata"]["version"], hashes["sha256"])
    return out


def render(lock: str, spec: dict, resolved: dict[tuple[str, str], dict[str, tuple[str, str]]]) -> str:
    """The lock file: a header naming its sources (with their SHA-256) and targets, then one entry per package
    with the hash of each target's wheel (a package whose version differs between targets is an error)."""
    merged: dict[str, tuple[str, set[str]]] = {}
    for packages in resolved.values():
        for name, (version, digest) in packages.items():
            have = merged.setdefault(name, (version, set()))
            if have[0] != version:
                raise LockError(f"{lock}: {name} resolves to {have[0]} and {version} on different targets; pin it")
            have[1].add(digest)
    targets = ", ".join(f"{p} Python {v}" for p, v in spec["targets"])
    lines = [f"# Hash-locked by ci/lock.py for {targets}: pip install --require-hashes -r {Path(lock).name}.",
             "# Do not edit: change the requirement files below, then run `make lock` (python3 ci/lock.py)."]
    lines += [f"# source: {p.relative_to(REPO)} sha256={sha256(p)}" for p in _sources(spec["requirements"])]
    for name in sorted(merged):
        version, digests = merged[name]
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{d}" + (" \\" if i < len(digests) - 1 else "")
                  for i, d in enumerate(sorted(digests))]
    return "\n".join(lines) + "\n"


def write(lock: str, text: str) -> None:
    path = REPO / lock
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check(lock: str, spec: dict) -> list[str]:
    """What is wrong with one lock, offline: missing, made from other requirement files, or a pinned version
    that differs from the requirement files'."""
    path = REPO / lock
    if not path.is_file():
        return [f"{lock} is missing: run `make lock`"]
    text = path.read_text()
    recorded = {m[1]: m[2] for m in (SOURCE.match(line) for line in text.splitlines()) if m}
    current = {str(p.relative_to(REPO)): sha256(p) for p in _sources(spec["requirements"])}
    problems = []
    if recorded != current:
        changed = sorted(set(recorded) ^ set(current) | {k for k in current if recorded.get(k) != current[k]})
        problems.append(f"{lock} was made from other requirement files (changed: {', '.join(changed)}): "
                        "run `make lock`")
    locked = pins(path)
    for rel in spec["requirements"]:
        for name, version in pins(REPO / rel).items():
            if locked.get(name) != version:
                problems.append(f"{lock}: {name}=={version} ({rel}) is locked as {locked.get(name) or 'nothing'}")
    entries = re.findall(r"^(\S+)==\S+ \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M)
    if len(entries) != len(locked):
        problems.append(f"{lock}: {len(locked) - len(entries)} package(s) without a --hash")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="offline: check every lock against the requirement "
                        "files it was made from; exit 1 when one is stale")
    parser.add_argument("locks", nargs="*", help=f"only these locks (default: all of {', '.join(LOCKS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.locks) - set(LOCKS))
    if unknown:
        parser.error(f"unknown lock(s) {', '.join(unknown)}; known: {', '.join(LOCKS)}")
    chosen = {k: v for k, v in LOCKS.items() if not args.locks or k in args.locks}
    if args.check:
        problems = [p for lock, spec in chosen.items() for p in check(lock, spec)]
        print("\n".join(problems) or f"{len(chosen)} locks match their requirement files")
        return 1 if problems else 0
    try:
        for lock, spec in chosen.items():
            resolved = {(p, v): resolve(spec["requirements"], p, v) for p, v in spec["targets"]}
            write(lock, render(lock, spec, resolved))
            print(f"{lock}: {len(next(iter(resolved.values())))} packages, {len(resolved)} target(s)")
    except LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
