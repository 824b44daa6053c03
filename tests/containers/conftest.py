"""Container tests: a real Docker engine (started here when none is reachable), a loopback
registry and local stand-ins for the public base images. Marked `containers`: `make test`
leaves them out, `make test-containers` runs them.

Where no engine can be had, the tests are skipped with the reason on a user's machine and fail
in CI (CI=true): CI must never pass by skipping them. The engine and registry started here are
stopped at the end of the session, whatever the outcome.
Set DEFECT_CI_DOCKER_ROOT to keep the private engine's image store (layer cache) between runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.containers.helpers import base_images, ci, engine

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.containers)


def _unavailable(reason: str):
    if ci():
        pytest.fail(f"CI=true and no Docker engine: {reason}", pytrace=False)
    pytest.skip(f"no Docker engine: {reason}")


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
    return base_images.build_image("amd64", docker_env)


@pytest.fixture(scope="session")
def base_arm64(docker_env, arm64) -> str:
    """The same for arm64, made under QEMU."""
    return base_images.build_image("arm64", docker_env)
