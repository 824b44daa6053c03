"""`asset sweep --slurm N` on a real SLURM cluster (ci/slurm.py: slurmctld + slurmd + munged, private, one node with
2 CPUs): the generated array script is sbatch'ed as it is, every shard's models end done, `asset sweep --status`
and `asset report` see them all; a task cancelled with scancel mid-training resumes from its last checkpoint when
the script is submitted again."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.asset.helpers import make_dataset
from tests.scaleout.conftest import ASSET

pytestmark = pytest.mark.scaleout

SWEEP = """\
archs: {archs}
encoders: [mobilenet_v2]
train:
  trainer: {{max_epochs: {epochs}, log_every_n_steps: 1, enable_progress_bar: false, limit_train_batches: 2,
            limit_val_batches: 1}}
  model: {{encoder_weights: none}}
  data: {{batch_size: 4, eval_batch_size: 8}}
benchmark: {{min_iter: 3, min_seconds: 0.05, max_seconds: 1.0}}
"""


def _asset(slurm, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*ASSET, *args], env=slurm.env, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"asset {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}")
    return r


def _script(slurm, root, name: str, archs: str, epochs: int, tasks: int):
    cfg = root / f"{name}.yaml"
    cfg.write_text(SWEEP.format(archs=archs, epochs=epochs))
    out = root / name
    script = _asset(slurm, "sweep", "--data", str(root / "data" / "tiny" / "latest"), "--out", str(out), "--config",
                    str(cfg), "--slurm", str(tasks), "--slurm-gres", "", "--slurm-cpus", "1",
                    "--slurm-time", "00:30:00").stdout.strip()
    return out, script


def _tail(path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return f"({path}: none)"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-sweep")
    make_dataset(root, n_train=12, n_test=6)
    return root


def test_sweep_array_runs_every_shard_on_slurm(slurm, root):
    out, script = _script(slurm, root, "grid", "[unet, linknet]", epochs=1, tasks=2)
    assert "#SBATCH --array=0-1" in open(script).read()
    job = slurm.sbatch(script)
    slurm.wait(job, timeout=900, what="sweep array")
    states = slurm.states(job)
    logs = {i: out / f"slurm-{job}_{i}.out" for i in (0, 1)}
    assert states == {f"{job}_0": ("COMPLETED", "0:0"), f"{job}_1": ("COMPLETED", "0:0")}, \
        f"{states}\n{_tail(logs[0])}\n{_tail(logs[1])}"
    for i, log in logs.items():  # each task ran its own shard of the one grid
        assert f"shard {i}/2: 1 models" in log.read_text()
    for name in ("unet--mobilenet_v2", "linknet--mobilenet_v2"):
        res = json.loads((out / "tiny" / name / "result.json").read_text())
        assert res["status"] == "done", res
        assert not (out / "tiny" / name / "lock").exists()
    status = _asset(slurm, "sweep", "--status", str(out)).stdout
    assert "2 done" in status.splitlines()[-1], status
    report = root / "report"
    _asset(slurm, "report", str(out), "--out", str(report))
    md = (report / "report.md").read_text()
    assert "MobileNetV2-Unet" in md and "MobileNetV2-Linknet" in md


def test_cancelled_task_resumes_on_resubmission(slurm, root):
    out, script = _script(slurm, root, "cancel", "[unet]", epochs=6, tasks=1)
    jdir = out / "tiny" / "unet--mobilenet_v2"
    last = jdir / "model" / "checkpoints" / "last.ckpt"
    job = slurm.sbatch(script)
    deadline = time.monotonic() + 600
    while not last.exists():  # the first epoch's checkpoint: cancel then, mid-training
        assert slurm.queued(job), f"the task ended before its first checkpoint:\n{_tail(out / f'slurm-{job}_0.out')}"
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.1)
    slurm.run("scancel", job)
    slurm.wait(job, timeout=120, what="cancelled task")
    assert slurm.states(job)[f"{job}_0"][0] == "CANCELLED"
    assert not (jdir / "result.json").exists(), "a cancelled task must not be recorded as done or failed"
    assert not (jdir / "model" / "model.json").exists()
    status = _asset(slurm, "sweep", "--status", str(out)).stdout
    assert status.startswith("interrupted") and "1 interrupted" in status, status

    again = slurm.sbatch(script)  # the same script, as a user would resubmit it
    slurm.wait(again, timeout=900, what="resubmitted task")
    log = _tail(out / f"slurm-{again}_0.out")
    assert slurm.states(again)[f"{again}_0"] == ("COMPLETED", "0:0"), log
    assert "resuming from checkpoints/last.ckpt" in (out / f"slurm-{again}_0.out").read_text(errors="replace"), log
    res = json.loads((jdir / "result.json").read_text())
    assert res["status"] == "done" and res["training"]["resumed"] is True, res
    card = json.loads((jdir / "model" / "model.json").read_text())
    assert card["training"]["epochs"] == 6 and len(card["training"]["val_history"]) == 6
    assert "1 done" in _asset(slurm, "sweep", "--status", str(out)).stdout
