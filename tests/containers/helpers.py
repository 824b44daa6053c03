"""Shared helpers of the container tests: the docker client, image builds from stand-in bases."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time

from tests import REPO, ci  # noqa: F401  (ci: the helpers' users import it from here)

CI = REPO / "ci"


def load_ci_module(name: str, filename: str):
    """ci/ holds scripts, not a package (their names have dashes); load one by path."""
    spec = importlib.util.spec_from_file_location(name, CI / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


engine = load_ci_module("ci_engine", "engine.py")
base_images = load_ci_module("ci_base_images", "base-images.py")
wheelhouse = load_ci_module("ci_wheelhouse", "wheelhouse.py")
DOCKER = engine.DOCKER


def run(cmd: list[str], env: dict[str, str], timeout: float = 1800, check: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    """Run a command, and on failure show its output in the assertion (what a reader needs first)."""
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n"
                             f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result


def docker(env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run([DOCKER, *args], env, **kwargs)


def build(env: dict[str, str], dockerfile: str, tag: str, *, context: str = ".", platform: str = "linux/amd64",
          base: str | None = None, wheels: str | None = None, args: dict[str, str] | None = None,
          base_arg: str = "BASE") -> float:
    """BuildKit build of a repository Dockerfile, offline (--network none) from a wheelhouse image.

    Returns the build's wall time in seconds (reported, never asserted)."""
    cmd = [DOCKER, "build", "--network", "none", "--platform", platform, "-f", dockerfile, "-t", tag]
    for key, value in {base_arg: base, "WHEELS": wheels, **(args or {})}.items():
        if value is not None:
            cmd += ["--build-arg", f"{key}={value}"]
    started = time.monotonic()
    run([*cmd, context], {**env, "DOCKER_BUILDKIT": "1"}, cwd=REPO)
    elapsed = time.monotonic() - started
    print(f"\nbuilt {tag} in {elapsed:.0f} s", file=sys.stderr)
    return elapsed


def make_image(env: dict[str, str], target: str, image: str, base: str, wheels: str, tag: str) -> float:
    """`make image-...` (what a user runs), offline from a wheelhouse; returns the wall time in seconds."""
    started = time.monotonic()
    run(["make", "--no-print-directory", target, f"DOCKER={DOCKER}", "REGISTRY=defect", f"TAG={tag}",
         f"BASE={base}", f"WHEELS={wheels}", "NETWORK=none"], env, cwd=REPO)
    elapsed = time.monotonic() - started
    docker(env, "image", "inspect", image)  # the target tagged the image the tests use
    print(f"\nmade {image} ({target}) in {elapsed:.0f} s", file=sys.stderr)
    return elapsed


def wheels_image(env: dict[str, str], name: str, requirements: list[str], platform: str = "linux/amd64",
                 python: str = "3.11") -> str:
    """The wheelhouse for these requirements, downloaded once (cached) and packed as an image.

    In CI the downloaded folder is removed once packed: a fresh machine gains nothing from a second copy on
    disk (3 GB for the asset's torch stack), and a CI run ran out of disk with both."""
    paths = [REPO / r for r in requirements]
    tag = f"defect-ci/wheels:{name}-{wheelhouse.key(platform, python, paths)}"
    if docker(env, "image", "inspect", tag, check=False).returncode == 0:
        return tag
    folder = wheelhouse.download(platform, python, paths)
    wheelhouse.pack(folder, tag, env, platform)
    if ci():
        shutil.rmtree(folder, ignore_errors=True)
    return tag


def release_wheels(env: dict[str, str], wheels: str) -> None:
    """CI only: once its images are built, drop a wheelhouse image and the build cache that holds it (disk).
    A user's machine keeps both, so that rebuilds stay offline and fast."""
    if ci():
        docker(env, "rmi", wheels, check=False)
        docker(env, "builder", "prune", "--force", check=False)


def image_size_mb(env: dict[str, str], tag: str) -> float:
    return int(docker(env, "image", "inspect", "--format", "{{.Size}}", tag).stdout) / 1e6


def wait_healthy(env: dict[str, str], container: str, timeout: float = 180) -> str:
    """Poll the container's health status until healthy; the last health log on failure."""
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        status = docker(env, "inspect", "--format", "{{.State.Health.Status}}", container, check=False).stdout.strip()
        if status == "healthy":
            return status
        if status == "unhealthy":
            break
        time.sleep(1)
    health = docker(env, "inspect", "--format", "{{json .State.Health}}", container, check=False).stdout
    logs = docker(env, "logs", "--tail", "50", container, check=False)
    raise AssertionError(f"{container} is {status}:\n{health}\n{logs.stdout}{logs.stderr}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



