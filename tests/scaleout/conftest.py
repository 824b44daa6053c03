"""Scale-out tests on real engines: a private SLURM cluster (slurmctld + slurmd + munged, ci/slurm.py) and
multi-process training through torchrun on loopback (gloo). Marked `scaleout`: `make test` leaves them out,
`make test-scaleout` (and .ci/run) runs them. Where SLURM cannot be had (not root and not installed) they skip
with the reason on a user's machine and fail under CI=true. Everything started here is stopped by PID."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import unavailable
from tests.conftest import REPO

PYTHON = sys.executable
ASSET = [PYTHON, "-m", "asset.cli"]


def _load_ci_slurm():
    spec = importlib.util.spec_from_file_location("ci_slurm", REPO / "ci" / "slurm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ci_slurm"] = mod
    spec.loader.exec_module(mod)
    return mod


ci_slurm = _load_ci_slurm()



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    """What every training process here gets: offline, loopback-only gloo, one thread, the venv first on PATH."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "ASSET": " ".join(ASSET),
           "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) or k in ("RANK", "WORLD_SIZE",
                                                                                      "LOCAL_RANK", "MASTER_ADDR",
                                                                                      "MASTER_PORT")]:
        env.pop(key)
    return env


class Slurm:
    """The running cluster and helpers to submit to it and wait."""

    def __init__(self, cluster):
        self.cluster = cluster

    @property
    def env(self) -> dict[str, str]:
        return self.cluster.client_env(base_env())

    def run(self, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), env=env or self.env, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                                 f"\n{self.cluster.log_tail('slurmctld.log')}")
        return result

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        return self.run("sbatch", "--parsable", *args, env=env).stdout.strip().split(";")[0]

    def queued(self, job: str) -> bool:
        out = self.run("squeue", "--noheader", "--format=%i", "--jobs", job, check=False).stdout
        return bool(out.strip())

    def wait(self, job: str, timeout: float, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while self.queued(job):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} ({what}) still queued or running after {timeout:.0f} s:\n"
                                     f"{self.run('squeue', check=False).stdout}")
            time.sleep(1)

    def states(self, job: str) -> dict[str, tuple[str, str]]:
        """{job id (array tasks as JOB_i): (JobState, ExitCode)} from slurmctld (records kept MinJobAge=600 s)."""
        out = self.run("scontrol", "--oneliner", "show", "job", job).stdout
        states = {}
        for line in out.splitlines():
            f = dict(w.split("=", 1) for w in line.split() if "=" in w)
            key = f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if f.get("ArrayTaskId") not in (None, "N/A") else f["JobId"]
            states[key] = (f["JobState"], f["ExitCode"])
        return states


@pytest.fixture(scope="session")
def slurm():
    """A private one-node cluster (2 CPUs) for the session; stopped at the end with nothing left running."""
    state = Path(tempfile.mkdtemp(prefix="defect-slurm-"))
    cluster = ci_slurm.Cluster(state)
    try:
        cluster.start(cpus=2)
    except (ci_slurm.SlurmError, OSError, subprocess.CalledProcessError) as exc:
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)
        unavailable(f"no SLURM cluster: {exc}")
    try:
        yield Slurm(cluster)
    finally:
        cluster.stop()
        left = cluster.pids()
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"SLURM daemons still running after stop: {left}"
