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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import apt  # noqa: E402  (ci/ is not a package: these run as plain scripts on bare runners)

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
    apt.install(missing_packages(), EngineError, log)


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


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a] or None


def _alive(pid: int, name: str, marker: str | None = None) -> bool:
    """The process exists, is the program we started and - with `marker` (our state folder, socket or config) -
    carries it among its arguments: a reused PID, even one of another dockerd, is never taken for ours."""
    if pid <= 0:
        return False
    args = _cmdline(pid)
    if not args or Path(args[0]).name != name:
        return False
    return marker is None or any(marker in a for a in args[1:])


def _stop(pid: int, name: str, grace: float = 20.0, marker: str | None = None) -> None:
    if not _alive(pid, name, marker):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, name, marker):
        time.sleep(0.2)
    if _alive(pid, name, marker):
        log(f"{name} ({pid}) ignored SIGTERM; killing it")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid, name, marker):
            time.sleep(0.1)


ENGINE_PROGRAMS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc", "docker-proxy")


def _processes_using(marker: str) -> list[int]:
    """PIDs of the engine's own programs (ENGINE_PROGRAMS: never a shell or a test that merely names the folder)
    whose arguments name `marker`: the containerd and shims of a dockerd started with its exec root there, which
    outlive a SIGKILLed dockerd."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        args = _cmdline(int(entry.name))
        if args and Path(args[0]).name in ENGINE_PROGRAMS and any(marker in a for a in args):
            out.append(int(entry.name))
    return out


def _kill_all(pids: list[int], grace: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and _cmdline(pid) for pid in pids):
            time.sleep(0.1)


def _mounts_under(*roots: Path) -> list[str]:
    """Mount points under any of `roots` (absolute), deepest first."""
    prefixes = [f"{Path(r).absolute()}/" for r in roots]
    targets = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if any(target.startswith(p) or f"{target}/" == p for p in prefixes):
            targets.append(target)
    return sorted(set(targets), key=lambda t: t.count("/"), reverse=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class Engine:
    """A dockerd whose every file lives in `state` (data root may be put elsewhere to keep a cache)."""

    def __init__(self, state: Path, data_root: Path | None = None):
        self.state = Path(state).absolute()  # a relative --dir: /proc/mounts and the daemon see absolute paths
        self.data_root = Path(data_root).absolute() if data_root else self.state / "root"
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
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise EngineError(f"dockerd exited ({proc.returncode}):\n{self.log_tail()}")
                if self.sock.exists() and reachable({**os.environ, **self.env}):
                    log(f"engine up: {self.env['DOCKER_HOST']} (pid {proc.pid}, data root {self.data_root})")
                    return
                time.sleep(0.5)
            raise EngineError(f"dockerd did not answer within {timeout:.0f} s:\n{self.log_tail()}")
        except BaseException:  # Ctrl-C or a failure while waiting: no root dockerd is left running
            self.stop()
            raise

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
            _stop(pid, "dockerd", marker=str(self.sock))
            log(f"engine stopped (pid {pid})")
        (self.state / "dockerd.spawned").unlink(missing_ok=True)
        # After a SIGKILL (or a crash) its containerd and the container shims live on: every process whose
        # arguments name this state folder is ours to stop.
        leftovers = _processes_using(str(self.state) + "/")
        if leftovers:
            log(f"stopping {len(leftovers)} leftover process(es) of this engine (containerd, shims): {leftovers}")
            _kill_all(leftovers)
        # dockerd leaves its network namespace bind-mounted in the exec root, and a killed one its containers'
        # overlay mounts in the data root: unmount them, deepest first (lazily if busy).
        for target in _mounts_under(self.state, self.data_root):
            if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True)


class Registry:
    """Debian's docker-registry (Docker distribution 2.8) on loopback; its data in the state folder."""

    def __init__(self, state: Path):
        self.state = Path(state).absolute()
        self.pidfile = self.state / "registry.pid"

    @property
    def address(self) -> str | None:
        try:
            return json.loads((self.state / "registry.json").read_text())["address"]
        except (OSError, ValueError, KeyError):
            return None

    def start(self, port: int = 0, timeout: float = 30.0) -> str:
        install_packages()
        if self.address and _alive(_read_pid(self.pidfile) or -1, "docker-registry", str(self.state)):
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
        _stop(proc.pid, "docker-registry", marker=str(self.state))
        raise EngineError(f"docker-registry did not answer on {address} within {timeout:.0f} s")

    def stop(self) -> None:
        pid = _read_pid(self.pidfile)
        if pid:
            _stop(pid, "docker-registry", grace=10, marker=str(self.state))
            log(f"registry stopped (pid {pid})")
        self.pidfile.unlink(missing_ok=True)
        (self.state / "registry.json").unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BINFMT = Path("/proc/sys/fs/binfmt_misc")
AARCH64_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
# onnxruntime 1.32's aarch64 wheel segfaults at import under QEMU 7.2 (Debian bookworm's qemu-user-static);
# QEMU 10 (Debian trixie's qemu-user, statically linked) runs it. Older emulators are replaced for this kernel.
MIN_QEMU = (8, 0)
NEWER_QEMU_SUITE = "trixie"


def qemu_version(exe: str | Path) -> tuple[int, int] | None:
    """(major, minor) that a qemu-user binary prints, or None when it does not run."""
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.split()
    if "version" not in words:
        return None
    numbers = words[words.index("version") + 1].split(".")
    try:
        return int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return None


def _debian_mirror() -> str:
    """The Debian archive this machine's apt already uses (its sources, not a name written here)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if path.suffix == ".sources" and words[:1] == ["URIs:"]:
                uris = [u for u in words[1:] if not u.rstrip("/").endswith("-security")]
            elif words[:1] == ["deb"]:
                uris = [u for u in words[1:] if "://" in u and not u.rstrip("/").endswith("-security")]
            else:
                continue
            if uris:
                return uris[0].rstrip("/")
    raise EngineError("no Debian archive in /etc/apt/sources*: cannot fetch a newer qemu-user")


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_qemu(cache: Path) -> Path | None:
    """The cached qemu-aarch64 when it is exactly what was extracted from the apt-verified package: its SHA-256
    recorded beside it at fetch time, the file and its folder writable by its owner only (it is run as root and
    registered for every arm64 binary of the machine). None when absent; EngineError when it was changed."""
    exe, record = cache / "qemu-aarch64", cache / "qemu-aarch64.sha256"
    if not exe.exists():
        return None
    for path in (cache, exe):
        st = path.stat()
        if st.st_mode & 0o022 or st.st_uid != os.geteuid():
            raise EngineError(f"{path} is writable by others or owned by another user: refusing to run the cached "
                              f"QEMU as root (remove {cache} to fetch it again)")
    try:
        expected = record.read_text().split()[0]
    except (OSError, IndexError):
        return None  # cached by an older version, without a record: fetched again
    if _sha256(exe) != expected:
        raise EngineError(f"{exe} does not match the SHA-256 recorded when it was fetched ({record}): it was changed; "
                          f"remove {cache} to fetch it again")
    return exe


def _temp_path(folder: Path, prefix: str) -> Path:
    """A new private file's name in `folder`, its descriptor closed: a binary still open for writing in this
    process cannot be executed (ETXTBSY), so the emulator would not even print its version."""
    fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.close(fd)
    return Path(name)


def newer_qemu() -> Path:
    """A qemu-aarch64 >= MIN_QEMU: Debian trixie's static qemu-user, fetched with apt (signed index, package hash
    checked) into the cache once; the extracted binary's SHA-256 is recorded and checked at every later use."""
    cache = Path(os.environ.get("DEFECT_CI_CACHE") or Path.home() / ".cache/defect-ci") / "qemu"
    exe = cache / "qemu-aarch64"
    cached = cached_qemu(cache)
    if cached is not None and (qemu_version(cached) or (0, 0)) >= MIN_QEMU:
        return cached
    with tempfile.TemporaryDirectory(prefix="defect-qemu-") as tmp:
        work = Path(tmp)
        (work / "lists/partial").mkdir(parents=True)
        (work / "cache/archives/partial").mkdir(parents=True)
        (work / "sources.list").write_text(f"deb {_debian_mirror()} {NEWER_QEMU_SUITE} main\n")
        opts = [f"-oDir::Etc::sourcelist={work / 'sources.list'}", "-oDir::Etc::sourceparts=-",
                f"-oDir::State::Lists={work / 'lists'}", f"-oDir::Cache={work / 'cache'}", "-qq"]
        log(f"fetching qemu-user from Debian {NEWER_QEMU_SUITE} (the installed QEMU is older than "
            f"{MIN_QEMU[0]}.{MIN_QEMU[1]} and crashes onnxruntime's aarch64 wheel)")
        for cmd in (["apt-get", *opts, "update"], ["apt-get", *opts, "download", "qemu-user"]):
            result = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
            if result.returncode != 0:
                raise EngineError(f"{' '.join(cmd[:1] + cmd[-2:])} failed:\n{result.stderr[-2000:]}")
        deb = next(work.glob("qemu-user_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True)
        cache.mkdir(parents=True, exist_ok=True, mode=0o755)
        staged = _temp_path(cache, ".qemu-aarch64.")
        shutil.copy2(work / "x/usr/bin/qemu-aarch64", staged)
        os.chmod(staged, 0o755)
        digest = _sha256(staged)
        os.replace(staged, exe)
        record = cache / "qemu-aarch64.sha256"
        staged_record = _temp_path(cache, ".qemu-aarch64.sha256.")
        staged_record.write_text(f"{digest}  qemu-aarch64 (from {deb.name})\n")
        os.replace(staged_record, record)
    if (qemu_version(exe) or (0, 0)) < MIN_QEMU:
        raise EngineError(f"{exe} does not report QEMU >= {MIN_QEMU[0]}.{MIN_QEMU[1]}")
    return exe


def registered_interpreter() -> Path | None:
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        return None
    for line in entry.read_text().splitlines():
        if line.startswith("interpreter "):
            return Path(line.split(" ", 1)[1])
    return None


def _interpreter_version(path: Path) -> tuple[int, int] | None:
    """Debian registers a wrapper (/usr/libexec/qemu-binfmt/aarch64-binfmt-P) for qemu-aarch64-static."""
    if path.name.endswith("-binfmt-P"):
        path = Path(shutil.which("qemu-aarch64-static") or path)
    return qemu_version(path)


def enable_binfmt() -> None:
    """Register a QEMU (>= MIN_QEMU) for arm64 binaries so arm64 images build and run on x86-64.
    Flag F: the kernel opens the emulator now, so it also works inside containers and chroots."""
    current = registered_interpreter()
    if current is not None and (_interpreter_version(current) or (0, 0)) >= MIN_QEMU:
        return
    if os.geteuid() != 0:
        raise EngineError("arm64 emulation needs QEMU >= 8 registered in binfmt_misc, and registering it needs "
                          "root (run: sudo python3 ci/engine.py binfmt)")
    install_packages()
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    exe = newer_qemu()
    if (BINFMT / "qemu-aarch64").exists():
        (BINFMT / "qemu-aarch64").write_text("-1")  # unregister the older emulator
    (BINFMT / "register").write_text(f":qemu-aarch64:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{exe}:F")
    if registered_interpreter() != exe:
        raise EngineError("qemu-aarch64 could not be registered in binfmt_misc")
    log(f"arm64 emulation enabled ({exe}, QEMU {'.'.join(map(str, qemu_version(exe)))})")


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
