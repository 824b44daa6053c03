#!/usr/bin/env python3
"""A private Docker engine (and loopback registry) for tests and CI, started and stopped by PID.

CI machines have a docker client but no engine, no registry and nothing to pull from. As root,
this installs Debian's engine packages when missing and starts `dockerd` with its own data root,
exec root, socket and PID file under one state folder, without iptables and without the default
bridge: containers use `--network host` (or `none`). `down` stops exactly the processes recorded
in that folder. Standard library only, so it runs before any virtual environment exists.

    eval "$(python3 ci/engine.py up)"        # prints export DOCKER_HOST=... DEFECT_ENGINE_DIR=...
    python3 ci/engine.py registry-up         # prints export DEFECT_REGISTRY=127.0.0.1:PORT
    python3 ci/engine.py binfmt              # arm64 containers under QEMU
    python3 ci/engine.py down                # stops the registry and the engine this folder started
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Debian's 20.10 client runs BuildKit builds without buildx; a newer client elsewhere on PATH refuses to.
DOCKER = "/usr/bin/docker"
PACKAGES = ["docker.io", "docker-compose", "docker-registry", "qemu-user-static", "binfmt-support", "debootstrap"]
NEEDED = {"dockerd": "docker.io", DOCKER: "docker.io", "docker-compose": "docker-compose",
          "docker-registry": "docker-registry", "qemu-aarch64-static": "qemu-user-static",
          "update-binfmts": "binfmt-support", "debootstrap": "debootstrap"}


class EngineError(RuntimeError):
    """The engine cannot be used here; the message says why."""


def log(message: str) -> None:
    print(f"engine: {message}", file=sys.stderr, flush=True)


def missing_packages() -> list[str]:
    return sorted({pkg for exe, pkg in NEEDED.items() if not (shutil.which(exe) or Path(exe).exists())})


def install_packages() -> None:
    """apt-get the engine packages that are missing (root only: a user's machine is never changed)."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EngineError(f"missing {', '.join(missing)}; install as root: apt-get install {' '.join(PACKAGES)}")
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise EngineError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def reachable(env: dict[str, str] | None = None) -> bool:
    """True when a Docker engine answers with the given environment (DOCKER_HOST)."""
    client = DOCKER if Path(DOCKER).exists() else shutil.which("docker")
    if not client:
        return False
    try:
        result = subprocess.run([client, "version", "--format", "{{.Server.Version}}"],
                                env=env or dict(os.environ), capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def _alive(pid: int, name: str) -> bool:
    """The process exists and is the program we started (guards against a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(cmdline).name == name


def _stop(pid: int, name: str, grace: float = 20.0) -> None:
    if not _alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, name):
        time.sleep(0.2)
    if _alive(pid, name):
        log(f"{name} ({pid}) ignored SIGTERM; killing it")
        os.kill(pid, signal.SIGKILL)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class Engine:
    """A dockerd whose every file lives in `state` (data root may be put elsewhere to keep a cache)."""

    def __init__(self, state: Path, data_root: Path | None = None):
        self.state = Path(state)
        self.data_root = Path(data_root) if data_root else self.state / "root"
        self.sock = self.state / "docker.sock"
        self.pidfile = self.state / "dockerd.pid"

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": f"unix://{self.sock}", "DEFECT_ENGINE_DIR": str(self.state)}

    def start(self, timeout: float = 90.0) -> None:
        if os.geteuid() != 0:
            raise EngineError("starting a private Docker engine needs root (or start one yourself and set DOCKER_HOST)")
        install_packages()
        self.state.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        log_file = open(self.state / "dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon
        cmd = ["dockerd", "--data-root", str(self.data_root), "--exec-root", str(self.state / "exec"),
               "--pidfile", str(self.pidfile), "-H", f"unix://{self.sock}",
               "--iptables=false", "--ip-masq=false", "--bridge=none"]
        # Own session: a Ctrl-C in the calling shell does not reach the daemon half-way through a stop.
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        (self.state / "dockerd.spawned").write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EngineError(f"dockerd exited ({proc.returncode}):\n{self.log_tail()}")
            if self.sock.exists() and reachable({**os.environ, **self.env}):
                log(f"engine up: {self.env['DOCKER_HOST']} (pid {proc.pid}, data root {self.data_root})")
                return
            time.sleep(0.5)
        self.stop()
        raise EngineError(f"dockerd did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.state / "dockerd.log").read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the registry and the daemon this state folder records; nothing else."""
        Registry(self.state).stop()
        pid = _read_pid(self.state / "dockerd.spawned") or _read_pid(self.pidfile)
        if pid:
            _stop(pid, "dockerd")
            log(f"engine stopped (pid {pid})")
        (self.state / "dockerd.spawned").unlink(missing_ok=True)
        # dockerd leaves its default network namespace bind-mounted in the exec root.
        for line in Path("/proc/mounts").read_text().splitlines():
            target = line.split()[1]
            if target.startswith(f"{self.state}/"):
                subprocess.run(["umount", target], capture_output=True)


class Registry:
    """Debian's docker-registry (Docker distribution 2.8) on loopback; its data in the state folder."""

    def __init__(self, state: Path):
        self.state = Path(state)
        self.pidfile = self.state / "registry.pid"

    @property
    def address(self) -> str | None:
        try:
            return json.loads((self.state / "registry.json").read_text())["address"]
        except (OSError, ValueError, KeyError):
            return None

    def start(self, port: int = 0, timeout: float = 30.0) -> str:
        install_packages()
        if self.address and _alive(_read_pid(self.pidfile) or -1, "docker-registry"):
            return self.address
        self.state.mkdir(parents=True, exist_ok=True)
        port = port or _free_port()
        address = f"127.0.0.1:{port}"
        config = self.state / "registry.yml"
        config.write_text("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {self.state / 'registry'}\n"
                          f"http:\n  addr: {address}\n")
        log_file = open(self.state / "registry.log", "ab")  # noqa: SIM115 - handed to the daemon
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EngineError(f"docker-registry exited ({proc.returncode}): see {self.state / 'registry.log'}")
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=2):
                    (self.state / "registry.json").write_text(json.dumps({"address": address}))
                    log(f"registry up: {address} (pid {proc.pid})")
                    return address
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        _stop(proc.pid, "docker-registry")
        raise EngineError(f"docker-registry did not answer on {address} within {timeout:.0f} s")

    def stop(self) -> None:
        pid = _read_pid(self.pidfile)
        if pid:
            _stop(pid, "docker-registry", grace=10)
            log(f"registry stopped (pid {pid})")
        self.pidfile.unlink(missing_ok=True)
        (self.state / "registry.json").unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def enable_binfmt() -> None:
    """Register QEMU for arm64 binaries so arm64 images build and run on x86-64."""
    if Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        if "enabled" in Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text():
            return
    if os.geteuid() != 0:
        raise EngineError("arm64 emulation is not registered and registering it needs root "
                          "(update-binfmts --enable qemu-aarch64)")
    install_packages()
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], check=True)
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True, capture_output=True)
    if "enabled" not in Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text():
        raise EngineError("qemu-aarch64 is registered but not enabled")
    log("arm64 emulation enabled (qemu-aarch64)")


def state_dir(arg: str | None) -> Path:
    path = arg or os.environ.get("DEFECT_ENGINE_DIR")
    if not path:
        raise EngineError("no state folder: pass --dir or set DEFECT_ENGINE_DIR (printed by `up`)")
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a private engine unless one is reachable; print the env to use")
    up.add_argument("--dir", help="state folder (default: a new temporary folder)")
    up.add_argument("--data-root", help="image store (default: DIR/root; a kept folder keeps the layer cache)")
    up.add_argument("--private", action="store_true", help="start our own engine even if one is reachable")
    down = sub.add_parser("down", help="stop the registry and engine this state folder started")
    down.add_argument("--dir")
    down.add_argument("--keep", action="store_true", help="keep the state folder (logs)")
    reg = sub.add_parser("registry-up", help="start a loopback registry; print its address")
    reg.add_argument("--dir")
    reg.add_argument("--port", type=int, default=0, help="default: a free port")
    regdown = sub.add_parser("registry-down", help="stop that registry")
    regdown.add_argument("--dir")
    sub.add_parser("binfmt", help="enable arm64 emulation (QEMU via binfmt_misc)")
    sub.add_parser("install", help="apt-get the engine packages that are missing (root)")
    sub.add_parser("status", help="exit 0 when an engine is reachable with the current environment")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            if not args.private and reachable():
                log(f"an engine is reachable already ({os.environ.get('DOCKER_HOST', 'default socket')}); using it")
                return 0
            state = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="defect-engine-"))
            engine = Engine(state, Path(args.data_root) if args.data_root else None)
            engine.start()
            for key, value in engine.env.items():
                print(f"export {key}={value}")
        elif args.cmd == "down":
            state = state_dir(args.dir)
            Engine(state).stop()
            if not args.keep and state.name.startswith("defect-engine-"):
                shutil.rmtree(state, ignore_errors=True)
        elif args.cmd == "registry-up":
            print(f"export DEFECT_REGISTRY={Registry(state_dir(args.dir)).start(args.port)}")
        elif args.cmd == "registry-down":
            Registry(state_dir(args.dir)).stop()
        elif args.cmd == "binfmt":
            enable_binfmt()
        elif args.cmd == "install":
            install_packages()
        elif args.cmd == "status":
            return 0 if reachable() else 1
    except EngineError as exc:
        print(f"engine: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
