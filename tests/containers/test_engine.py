"""The engine tooling itself (ci/engine.py, ci/base-images.py): what the other container tests stand on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.containers.helpers import REPO, docker, engine


def test_base_stand_ins_are_labelled_with_their_architecture(docker_env, base_amd64, base_arm64):
    for tag, arch, machine in ((base_amd64, "amd64", "x86_64"), (base_arm64, "arm64", "aarch64")):
        assert docker(docker_env, "image", "inspect", "--format", "{{.Architecture}}", tag).stdout.strip() == arch
        out = docker(docker_env, "run", "--rm", "--network", "none", "--platform", f"linux/{arch}", tag,
                     "sh", "-c", "uname -m; python --version; pip --version").stdout
        assert out.splitlines()[0] == machine
        assert "Python 3.11." in out and "pip " in out


def test_registry_push_and_pull(docker_env, registry, base_amd64):
    remote = f"{registry}/defect-ci/base:pushed"
    docker(docker_env, "tag", base_amd64, remote)
    docker(docker_env, "push", remote)
    docker(docker_env, "rmi", remote)
    docker(docker_env, "pull", remote)
    assert docker(docker_env, "image", "inspect", "--format", "{{.Id}}", remote).stdout == \
        docker(docker_env, "image", "inspect", "--format", "{{.Id}}", base_amd64).stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="a private engine needs root")
def test_up_and_down_stop_exactly_what_up_started(tmp_path):
    state = Path("/tmp") / f"defect-engine-test-{os.getpid()}"  # short: the daemon's socket paths are limited
    cli = [sys.executable, str(REPO / "ci/engine.py")]
    up = subprocess.run([*cli, "up", "--private", "--dir", str(state)], capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        env = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert env["DOCKER_HOST"] == f"unix://{state}/docker.sock"
        assert engine.reachable({**os.environ, **env})
        pid = int((state / "dockerd.spawned").read_text())
        reg = subprocess.run([*cli, "registry-up", "--dir", str(state)], capture_output=True, text=True, timeout=60)
        assert reg.returncode == 0, reg.stderr
        reg_pid = int((state / "registry.pid").read_text())
        assert reg.stdout.startswith("export DEFECT_REGISTRY=127.0.0.1:")
    finally:
        down = subprocess.run([*cli, "down", "--dir", str(state)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not engine._alive(pid, "dockerd") and not engine._alive(reg_pid, "docker-registry")
    assert not engine.reachable({**os.environ, **env})
    subprocess.run(["rm", "-rf", str(state)], check=False)


def test_down_without_a_state_folder_says_so(monkeypatch):
    monkeypatch.delenv("DEFECT_ENGINE_DIR", raising=False)
    result = subprocess.run([sys.executable, str(REPO / "ci/engine.py"), "down"], capture_output=True, text=True)
    assert result.returncode == 1 and "no state folder" in result.stderr


def test_arm64_emulator_is_new_enough_and_registered_with_fix_binary(arm64):
    """QEMU 7.2 crashes onnxruntime's aarch64 wheel at import: binfmt must point at a QEMU >= 8, opened at
    registration (flag F) so that containers and chroots use it."""
    interpreter = engine.registered_interpreter()
    assert interpreter is not None
    assert (engine._interpreter_version(interpreter) or (0, 0)) >= engine.MIN_QEMU
    flags = next(line for line in (engine.BINFMT / "qemu-aarch64").read_text().splitlines() if line.startswith("flags"))
    assert "F" in flags.split(":", 1)[1]


def test_debian_mirror_comes_from_the_apt_sources():
    mirror = engine._debian_mirror()
    assert "://" in mirror and not mirror.endswith("-security")
