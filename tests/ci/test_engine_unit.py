"""ci/engine.py's process and cache handling without starting a Docker engine (issue 27): a PID is only ours when
the process also names our state folder, the engine's leftover containerd and shims are stopped after a SIGKILL,
a Ctrl-C while the daemon starts leaves none running, a relative --dir works, and the cached QEMU binary is run
only when it matches the checksum recorded when it was fetched. The engine itself: tests/containers/test_engine.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import REPO

spec = importlib.util.spec_from_file_location("ci_engine", REPO / "ci" / "engine.py")
engine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(engine)


POPEN = subprocess.Popen


def fake(program: str, *args: str) -> subprocess.Popen:
    """A process whose argv[0] is `program` and whose arguments are `args` (Python sleeping underneath), returned once
    it shows them: between fork and exec the child still carries the parent's command line."""
    proc = POPEN([program, "-c", "import time; time.sleep(120)", *args], executable=sys.executable)
    deadline = time.monotonic() + 30
    while (engine._cmdline(proc.pid) or [""])[0] != program and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def gone(proc: subprocess.Popen, timeout: float = 30) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_a_pid_is_ours_only_with_our_state_folder(tmp_path):
    other = fake("dockerd", "-H", f"unix://{tmp_path / 'other' / 'docker.sock'}")
    try:
        assert engine._alive(other.pid, "dockerd")  # the program name alone: what was checked before
        assert not engine._alive(other.pid, "dockerd", str(tmp_path / "mine" / "docker.sock"))
        mine = engine.Engine(tmp_path / "mine")
        mine.state.mkdir()
        (mine.state / "dockerd.spawned").write_text(str(other.pid))  # our PID, reused by another engine
        mine.stop()
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


def test_stop_after_sigkill_leaves_no_engine_process(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    containerd = fake("containerd", "--config", f"{state}/exec/containerd/containerd.toml")
    shim = fake("containerd-shim-runc-v2", "-namespace", "moby", "-address", f"{state}/exec/containerd.sock")
    bystander = fake("bash", f"{state}/notes")  # names the folder but is not the engine's: left alone
    try:
        time.sleep(0.2)
        engine.Engine(state).stop()  # dockerd itself is already gone (SIGKILL): no PID file left
        assert gone(containerd) and gone(shim)
        assert bystander.poll() is None
    finally:
        for p in (containerd, shim, bystander):
            p.kill()
            p.wait()


def test_a_relative_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    e = engine.Engine(Path("rel"))
    assert e.state == tmp_path / "rel" and e.sock.is_absolute() and e.data_root.is_absolute()
    assert engine.Registry(Path("rel")).state.is_absolute()


def test_ctrl_c_while_the_daemon_starts_leaves_none_running(tmp_path, monkeypatch):
    e = engine.Engine(tmp_path / "state")
    spawned = []

    def popen(cmd, **kw):
        proc = fake("dockerd", *cmd[1:])
        spawned.append(proc)
        return proc

    def interrupted(env=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.os, "geteuid", lambda: 0)
    monkeypatch.setattr(engine, "install_packages", lambda: None)
    monkeypatch.setattr(engine.subprocess, "Popen", popen)
    monkeypatch.setattr(engine, "reachable", interrupted)
    e.state.mkdir()
    e.sock.touch()
    with pytest.raises(KeyboardInterrupt):
        e.start(timeout=60)
    assert gone(spawned[0])


def test_the_cached_qemu_must_match_its_recorded_checksum(tmp_path):
    cache = tmp_path / "qemu"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    assert engine.cached_qemu(cache) is None
    exe = cache / "qemu-aarch64"
    exe.write_bytes(b"\x7fELF the real one")
    exe.chmod(0o755)
    assert engine.cached_qemu(cache) is None  # no record (an older cache): fetched again
    (cache / "qemu-aarch64.sha256").write_text(f"{engine._sha256(exe)}  qemu-aarch64 (from qemu-user_10.deb)\n")
    assert engine.cached_qemu(cache) == exe
    exe.write_bytes(b"\x7fELF something else")
    with pytest.raises(engine.EngineError, match="does not match the SHA-256 recorded"):
        engine.cached_qemu(cache)
    (cache / "qemu-aarch64.sha256").write_text(f"{engine._sha256(exe)}  qemu-aarch64\n")
    exe.chmod(0o777)
    with pytest.raises(engine.EngineError, match="writable by others"):
        engine.cached_qemu(cache)


def test_a_fetched_qemu_runs_at_once(tmp_path, monkeypatch):
    """The fetch path end to end with stand-ins for apt-get and dpkg-deb: the extracted emulator is executed for its
    version right after it is written (a descriptor left open for writing made that fail with ETXTBSY), its SHA-256
    is recorded, and the next call takes it from the cache."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text('#!/bin/sh\nfor a; do last=$a; done\n'
                                     '[ "$last" = qemu-user ] && : > qemu-user_10.0.13_amd64.deb\nexit 0\n')
    (bin_dir / "dpkg-deb").write_text('#!/bin/sh\nmkdir -p "$3/usr/bin"\n'
                                      "printf '#!/bin/sh\\necho qemu-aarch64 version 10.0.13\\n' > \"$3/usr/bin/qemu-aarch64\"\n")
    for tool in ("apt-get", "dpkg-deb"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DEFECT_CI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "_debian_mirror", lambda: "http://deb.example.org/debian")
    exe = engine.newer_qemu()
    assert exe == tmp_path / "cache" / "qemu" / "qemu-aarch64" and engine.qemu_version(exe) == (10, 0)
    assert (exe.parent / "qemu-aarch64.sha256").read_text().split()[0] == engine._sha256(exe)
    assert not [p for p in exe.parent.iterdir() if p.name.startswith(".")]  # no staged leftovers
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 1\n")  # a second call must not fetch
    assert engine.newer_qemu() == exe


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/proc/mounts").exists(), reason="mounting needs root")
def test_stop_unmounts_what_is_left_under_the_state_and_data_root(tmp_path):
    state, data = tmp_path / "state", tmp_path / "data"
    target = data / "overlay2" / "x" / "merged"
    target.mkdir(parents=True)
    state.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], capture_output=True).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        engine.Engine(state, data).stop()
        assert str(target) not in Path("/proc/mounts").read_text()
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)
