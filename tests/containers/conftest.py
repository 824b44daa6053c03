"""Container tests: a real Docker engine (started here when none is reachable), a loopback
registry and local stand-ins for the public base images. Marked `containers`: `make test`
leaves them out, `make test-containers` runs them.

Where no engine can be had, the tests are skipped with the reason on a user's machine and fail
in CI (CI=true): CI must never pass by skipping them. The engine and registry started here are
stopped at the end of the session, whatever the outcome.
Set DEFECT_CI_DOCKER_ROOT to keep the private engine's image store (layer cache) between runs.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

from tests import unavailable
from tests.containers.helpers import (
    DOCKER,
    REPO,
    base_images,
    docker,
    engine,
    free_port,
    image_size_mb,
    make_image,
    release_wheels,
    run,
    wait_healthy,
    wheels_image,
)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.containers)


def _unavailable(reason: str):
    unavailable(f"no Docker engine: {reason}")


@pytest.fixture(scope="session")
def engine_state():
    """A private state folder (sockets, PIDs, registry); removed at the end."""
    state = Path(tempfile.mkdtemp(prefix="defect-engine-"))
    yield state
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_env(engine_state):
    """The environment for the docker client: an engine that is reachable, or ours."""
    env = {**os.environ}
    env.pop("DOCKER_BUILDKIT", None)
    if engine.reachable(env):
        yield env
        return
    data_root = os.environ.get("DEFECT_CI_DOCKER_ROOT")
    private = engine.Engine(engine_state, Path(data_root) if data_root else None)
    try:
        private.start()
    except engine.EngineError as exc:
        private.stop()
        _unavailable(str(exc))
    try:
        yield {**env, **private.env}
    finally:
        private.stop()


@pytest.fixture(scope="session")
def registry(docker_env, engine_state):
    """A loopback registry (Docker distribution); its address, e.g. 127.0.0.1:41234."""
    reg = engine.Registry(engine_state)
    try:
        address = reg.start()
    except engine.EngineError as exc:
        reg.stop()
        _unavailable(str(exc))
    try:
        yield address
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def arm64(docker_env):
    """arm64 binaries run under QEMU (binfmt_misc)."""
    try:
        engine.enable_binfmt()
    except (engine.EngineError, OSError) as exc:
        _unavailable(f"arm64 emulation: {exc}")


@pytest.fixture(scope="session")
def base_amd64(docker_env) -> str:
    """Stand-in for python:3.11-slim (debootstrap bookworm + Python 3.11), cached between runs."""
    return _base("amd64", docker_env)


@pytest.fixture(scope="session")
def base_arm64(docker_env, arm64) -> str:
    """The same for arm64, made under QEMU."""
    return _base("arm64", docker_env)


def _base(arch: str, env: dict[str, str]) -> str:
    try:
        return base_images.build_image(arch, env)
    except SystemExit as exc:  # the script's own message: no root for debootstrap, no mirror, ...
        _unavailable(f"no {arch} base stand-in: {exc}")


# --- images: each built once per session, offline (--network none) from a cached wheelhouse ---------

TAG = "ci"  # the tests' images: defect/<name>:ci, never a user's :dev


@pytest.fixture(scope="session")
def built():
    """Build wall times and image sizes, printed at the end of the session (reported, never asserted)."""
    figures: dict[str, str] = {}
    yield figures
    if figures:
        print("\n== images built by the container tests:\n" + "\n".join(f"  {k}: {v}" for k, v in figures.items()))


def _record(built, env, tag, seconds):
    built[tag] = f"{image_size_mb(env, tag):.0f} MB, built in {seconds:.0f} s"


@pytest.fixture(scope="session")
def datatool_images(docker_env, base_amd64, built) -> dict[str, str]:
    """defect/datatool-{synthetic,dagm}:ci (one Dockerfile, DATASET arg; one layer cache)."""
    wheels = wheels_image(docker_env, "datatools", ["datatools/requirements.lock"])
    tags = {}
    for dataset in ("synthetic", "dagm"):
        tag = f"defect/datatool-{dataset}:{TAG}"
        seconds = make_image(docker_env, f"image-datatool-{dataset}", tag, base_amd64, wheels, TAG)
        _record(built, docker_env, tag, seconds)
        tags[dataset] = tag
    release_wheels(docker_env, wheels)
    return tags


@pytest.fixture(scope="session")
def asset_image(docker_env, base_amd64, built) -> str:
    """defect/asset:ci, the full stack (torch); the slowest build, done once."""
    wheels = wheels_image(docker_env, "asset", ["asset/requirements.lock"])
    tag = f"defect/asset:{TAG}"
    _record(built, docker_env, tag, make_image(docker_env, "image-asset", tag, base_amd64, wheels, TAG))
    release_wheels(docker_env, wheels)
    return tag


@pytest.fixture(scope="session")
def x86_cpu_image(docker_env, base_amd64, built) -> str:
    wheels = wheels_image(docker_env, "x86-cpu", ["platforms/x86-cpu/requirements.lock"])
    tag = f"defect/asset:x86-cpu-{TAG}"
    _record(built, docker_env, tag, make_image(docker_env, "image-x86-cpu", tag, base_amd64, wheels, TAG))
    release_wheels(docker_env, wheels)
    return tag


@pytest.fixture(scope="session")
def rpi4_image(docker_env, base_arm64, built) -> str:
    wheels = wheels_image(docker_env, "rpi4", ["platforms/rpi4/requirements.lock"], platform="linux/arm64")
    tag = f"defect/asset:rpi4-{TAG}"
    _record(built, docker_env, tag, make_image(docker_env, "image-rpi4", tag, base_arm64, wheels, TAG))
    release_wheels(docker_env, wheels)
    return tag


# --- the workflow through docker-compose.yml: steps as session fixtures (each runs once) ----------------

COMPOSE = shutil.which("docker-compose") or "docker-compose"
TINY_TRAIN = ["--arch", "unet", "--encoder", "mobilenet_v2", "--encoder-weights", "none", "--epochs", "1",
              "--batch-size", "4", "--no-progress", "--set", "trainer.limit_train_batches=2",
              "--set", "trainer.limit_val_batches=1"]


class Project:
    """One compose project (its own volumes), torn down with its volumes at the end."""

    def __init__(self, env: dict[str, str]):
        self.name = f"defectci{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.env = {**env, "TAG": TAG, "REGISTRY": "defect", "PORT": str(self.port), "MODEL": "demo",
                    "COMPOSE_PROJECT_NAME": self.name}

    def __call__(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
        return run([COMPOSE, "-f", str(REPO / "docker-compose.yml"), *args], self.env, timeout=timeout,
                   check=check, cwd=REPO)

    def volume(self, name: str) -> str:
        return f"{self.name}_{name}"

    def copy_out(self, volume: str, path: str, dest: Path, image: str) -> Path:
        """Copy PATH out of a named volume (symlinks kept as they are) into DEST."""
        cid = docker(self.env, "create", "--network", "none", "-v", f"{self.volume(volume)}:/v:ro", image).stdout.strip()
        try:
            tar = subprocess.run([DOCKER, "cp", f"{cid}:/v/{path}", "-"], env=self.env,
                                 capture_output=True, check=True).stdout
        finally:
            docker(self.env, "rm", cid)
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(dest, filter="tar")
        return dest / Path(path).name


@pytest.fixture(scope="session")
def project(docker_env):
    if not shutil.which(COMPOSE):
        pytest.fail("docker-compose is not installed (python3 ci/engine.py install)")
    p = Project(docker_env)
    try:
        yield p
    finally:
        p("down", "--volumes", "--remove-orphans", check=False)


@pytest.fixture(scope="session")
def synthetic_version(project, datatool_images) -> str:
    """`docker compose run datatool-synthetic` into the datasets volume; the version path it printed."""
    result = project("run", "--rm", "-T", "datatool-synthetic", "--out", "/data", "--classes", "2", "--size", "64",
                     "--train-per-class", "10", "--test-per-class", "4", "--workers", "1")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def trained_model(project, synthetic_version, asset_image) -> str:
    """`docker compose run asset train` (tiny) from /data/synthetic/latest, then the ONNX export."""
    project("run", "--rm", "-T", "asset", "train", "--data", "/data/synthetic/latest", "--out", "/models/demo",
            *TINY_TRAIN)
    project("run", "--rm", "-T", "asset", "export", "--model", "/models/demo", "--format", "onnx")
    return "demo"


@pytest.fixture(scope="session")
def serving(project, trained_model, x86_cpu_image) -> str:
    """`docker compose up -d serve` on that model; the container id once healthy."""
    project("up", "-d", "--no-build", "serve")
    cid = project("ps", "-q", "serve").stdout.strip()
    wait_healthy(project.env, cid, timeout=240)
    return cid
