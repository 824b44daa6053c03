#!/usr/bin/env python3
"""A private one-node SLURM cluster (slurmctld + slurmd + munged) for tests and CI, started and stopped by PID.

Debian's `slurm-wlm` (bookworm: 22.05) and `munge` give the real daemons. As root, this installs them when
missing (as ci/engine.py does for the Docker engine); then, whoever runs it, it writes its own munge key,
slurm.conf, state and spool folders under one state folder, picks free loopback ports, and starts

    munged     own key and socket (STATE/munge/munge.socket), never the system's /run/munge
    slurmctld  SlurmctldPort = a free port, state in STATE/ctld, as the calling user (SlurmUser)
    slurmd     node `localhost` (NodeAddr 127.0.0.1), CPUs = --cpus (default 2), spool in STATE/spool

Clients (sbatch, squeue, scancel, srun) find it through SLURM_CONF=STATE/slurm.conf. `down` stops exactly the
processes whose PIDs this folder recorded. Standard library only, so it runs before any virtual environment.

    eval "$(python3 ci/slurm.py up --dir /tmp/slurm)"   # prints export SLURM_CONF=... DEFECT_SLURM_DIR=...
    sbatch --wrap 'hostname'; squeue
    python3 ci/slurm.py down --dir /tmp/slurm
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import apt  # noqa: E402  (ci/ is not a package: these run as plain scripts on bare runners)

PACKAGES = ["slurm-wlm", "munge"]
NEEDED = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "sbatch": "slurm-wlm", "srun": "slurm-wlm",
          "squeue": "slurm-wlm", "scancel": "slurm-wlm", "scontrol": "slurm-wlm", "sinfo": "slurm-wlm",
          "munged": "munge", "mungekey": "munge"}
SBIN = ("/usr/sbin", "/sbin")  # the daemons live here; a user's PATH may not name it
NODE = "localhost"  # the node's name: SLURM_NODELIST (and so Lightning's MASTER_ADDR) resolves on any machine


class SlurmError(RuntimeError):
    """The cluster cannot be used here; the message says why."""


def log(message: str) -> None:
    print(f"slurm: {message}", file=sys.stderr, flush=True)


def which(exe: str) -> str | None:
    return shutil.which(exe) or next((str(Path(d) / exe) for d in SBIN if (Path(d) / exe).is_file()), None)


def missing_packages() -> list[str]:
    return sorted({pkg for exe, pkg in NEEDED.items() if not which(exe)})


def install_packages() -> None:
    """apt-get slurm-wlm and munge when missing (root only: a user's machine is never changed)."""
    apt.install(missing_packages(), SlurmError, log)
    if missing_packages():
        raise SlurmError(f"still missing after apt-get: {', '.join(missing_packages())}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, name: str) -> bool:
    """PID runs and is the program we started (a reused PID of another program is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        state = next((line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("State:")), "")
    except (OSError, IndexError):
        return False
    argv0 = Path(cmdline).name  # slurmstepd names itself "slurmstepd: [JOB.STEP]"
    return (argv0 == name or argv0.startswith(f"{name}:")) and state != "Z"


def _stop(pid: int, name: str, grace: float = 15.0) -> None:
    if not _alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, name):
        time.sleep(0.1)
    if _alive(pid, name):
        log(f"{name} ({pid}) ignored SIGTERM; killing it")
        os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0 if _is_child(pid) else os.WNOHANG)  # reap it when this process started it
    except ChildProcessError:
        pass


def _is_child(pid: int) -> bool:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, IndexError, ValueError):
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


SLURM_CONF = """\
# Written by ci/slurm.py: a private one-node cluster; every path below is in this state folder.
ClusterName=defectci
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_lo}-{srun_hi}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups, no accounting daemon: processes tracked through /proc, job records kept in slurmctld's memory.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
LaunchParameters=use_interactive_step
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MaxArraySize=1001
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={hostname} CPUs={cpus} State=UNKNOWN
PartitionName=ci Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class Cluster:
    """munged + slurmctld + slurmd whose every file lives in `state`."""

    def __init__(self, state: Path):
        self.state = Path(state).resolve()
        self.conf = self.state / "slurm.conf"
        self.munge_socket = self.state / "munge" / "munge.socket"
        self._procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf), "DEFECT_SLURM_DIR": str(self.state)}

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = {**(os.environ if base is None else base), **self.env}
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if key != "SLURM_CONF":  # a test run inside a SLURM job must not aim its clients at that job
                env.pop(key)
        return env

    def start(self, cpus: int = 2, timeout: float = 180.0) -> None:
        install_packages()
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.state.mkdir(parents=True, exist_ok=True)
        for sub in ("munge", "ctld", "spool"):
            (self.state / sub).mkdir(mode=0o700, exist_ok=True)
        self.state.chmod(0o755)  # munged refuses a socket folder that others can write to
        try:
            self._start_munge()
            ports = {"ctld_port": free_port(), "slurmd_port": free_port()}
            lo = free_port()
            self.conf.write_text(SLURM_CONF.format(node=NODE, hostname=socket.gethostname(), user=user, cpus=cpus,
                                                   state=self.state, munge_socket=self.munge_socket,
                                                   srun_lo=lo, srun_hi=lo + 20, **ports))
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
            self._spawn("slurmd", [which("slurmd"), "-D", "-f", str(self.conf), "-N", NODE])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        log(f"cluster up: SLURM_CONF={self.conf} (node {NODE}, {cpus} CPUs)")

    def _start_munge(self) -> None:
        key = self.state / "munge" / "munge.key"
        if not key.exists():
            subprocess.run([which("mungekey"), "--create", "--keyfile", str(key)], check=True, capture_output=True)
        key.chmod(0o600)
        self._spawn("munged", [which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.state / 'munge' / 'munged.pid'}",
                               f"--log-file={self.state / 'munge' / 'munged.log'}",
                               f"--seed-file={self.state / 'munge' / 'munged.seed'}"])
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if time.monotonic() > deadline:
                raise SlurmError(f"munged did not create {self.munge_socket}:\n{self.log_tail('munge/munged.log')}")
            self._check_running("munged", "munge/munged.log")
            time.sleep(0.1)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log_file = open(self.state / f"{name}.out", "ab")  # noqa: SIM115 - handed to the daemon
        # Own session: a Ctrl-C in the calling shell does not reach the daemons half-way through a stop.
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **self.env})
        (self.state / f"{name}.spawned").write_text(str(proc.pid))
        self._procs[name] = proc

    def _check_running(self, name: str, logname: str) -> None:
        # poll(), not the command line: right after the fork the child still shows this program's name
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            raise SlurmError(f"{name} exited:\n{self.log_tail(f'{name}.out')}\n{self.log_tail(logname)}")

    def _wait_idle(self, timeout: float) -> None:
        """Until sinfo reports the node idle (slurmd registered with slurmctld)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_running("slurmctld", "slurmctld.log")
            self._check_running("slurmd", "slurmd.log")
            result = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], env=self.client_env(),
                                    capture_output=True, text=True)
            state = result.stdout.strip()
            if result.returncode == 0 and state.rstrip("*") == "idle":
                return
            time.sleep(0.5)
        raise SlurmError(f"node {NODE} not idle within {timeout:.0f} s (sinfo: {state or 'no answer'}):\n"
                         f"{self.log_tail('slurmctld.log')}\n{self.log_tail('slurmd.log')}")

    def log_tail(self, name: str, n: int = 3000) -> str:
        try:
            return f"--- {name}:\n" + (self.state / name).read_text(errors="replace")[-n:]
        except OSError:
            return f"--- {name}: (none)"

    def pids(self) -> dict[str, int]:
        """The daemons this folder started that still run."""
        out = {}
        for name in ("slurmd", "slurmctld", "munged"):
            pid = _read_pid(self.state / f"{name}.spawned")
            if pid and _alive(pid, name):
                out[name] = pid
        return out

    def stop(self) -> None:
        """Cancel what is queued, stop slurmd, slurmctld, munged (this folder's PIDs only)."""
        if self.conf.exists() and "slurmctld" in self.pids():
            subprocess.run(["scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name],
                           env=self.client_env(), capture_output=True, timeout=30)
            deadline = time.monotonic() + 20  # let slurmd end the jobs' processes before it stops
            while time.monotonic() < deadline:
                q = subprocess.run(["squeue", "--noheader", "--format=%i"], env=self.client_env(),
                                   capture_output=True, text=True, timeout=30)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is not None:  # started by this object: its Popen knows, even before the exec shows its name
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        log(f"{name} ({proc.pid}) ignored SIGTERM; killing it")
                        proc.kill()
                        proc.wait()
                log(f"{name} stopped (pid {proc.pid})")
            elif pid := _read_pid(self.state / f"{name}.spawned"):  # started by `up` in another process
                _stop(pid, name)
                log(f"{name} stopped (pid {pid})")
            (self.state / f"{name}.spawned").unlink(missing_ok=True)
        # Jobs still running (scancel did not end them in time): their slurmstepd carries this folder's SLURM_CONF
        # in its environment; end each one's processes, then it.
        parents: dict[int, int] = {}
        steps = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(proc.name)] = int(fields[1])
                if (proc / "comm").read_text().strip().startswith("slurmstepd") and \
                        f"SLURM_CONF={self.conf}".encode() in (proc / "environ").read_bytes():
                    steps.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                continue
        for step in steps:
            tree, todo = [], [step]
            while todo:
                pid = todo.pop()
                children = [c for c, p in parents.items() if p == pid]
                tree += children
                todo += children
            for pid in reversed(tree):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            _stop(step, "slurmstepd", grace=5)


def state_dir(arg: str | None) -> Path:
    path = arg or os.environ.get("DEFECT_SLURM_DIR")
    if not path:
        raise SlurmError("no state folder: pass --dir or set DEFECT_SLURM_DIR (printed by `up`)")
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a private cluster; print the environment to use")
    up.add_argument("--dir", help="state folder (default: a new temporary folder)")
    up.add_argument("--cpus", type=int, default=2, help="CPUs of the one node (default 2)")
    down = sub.add_parser("down", help="stop the daemons this state folder started")
    down.add_argument("--dir")
    down.add_argument("--keep", action="store_true", help="keep the state folder (logs)")
    sub.add_parser("install", help="apt-get slurm-wlm and munge when missing (root)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            state = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="defect-slurm-"))
            Cluster(state).start(cpus=args.cpus)
            for key, value in Cluster(state).env.items():
                print(f"export {key}={value}")
        elif args.cmd == "down":
            state = state_dir(args.dir)
            Cluster(state).stop()
            if not args.keep and state.name.startswith("defect-slurm-"):
                shutil.rmtree(state, ignore_errors=True)
        elif args.cmd == "install":
            install_packages()
    except SlurmError as exc:
        print(f"slurm: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
