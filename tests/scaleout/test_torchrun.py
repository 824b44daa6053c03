"""Multi-node training: `asset train` under torchrun as two "nodes" (two torchrun agents, c10d rendezvous on
loopback, gloo) against the same run in one process with the same global batch; only rank 0 writes; a rank killed
mid-training fails the run without a model card, and the run resumes from its checkpoint; the same training under
SLURM (`srun` in `sbatch --nodes=1 --ntasks=2`, Lightning's SLURM environment) on the private cluster.

The data: every step sees the whole training split (global batch = the split), so both runs see the same images
per step whatever the sampler order; BCE (a per-pixel mean) makes the DDP gradient the single-process one, and batch
normalisation takes its statistics over the global batch (trainer.sync_batchnorm, asset/training/sync_batchnorm.py),
so the two runs compute the same model up to the order of floating-point sums (trained in float64 here, so that
the comparison can be tight)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.asset.helpers import make_dataset
from tests.scaleout.conftest import ASSET, PYTHON, base_env, free_port

pytestmark = pytest.mark.scaleout

EPOCHS = 12  # enough for the bright squares of the tiny set to be learnt: metrics worth comparing


def _train_args(data: Path, out: Path, batch: int, epochs: int = EPOCHS) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--arch", "unet", "--encoder", "mobilenet_v2",
            "--encoder-weights", "none", "--epochs", str(epochs), "--batch-size", str(batch), "--loss", "bce",
            # float64: 12 fast steps of an untrained network amplify float32 rounding (sums in another order) to
            # 10-20% of the weights; in float64 the two runs stay 1e-8 apart. SGD, defect pixels weighted: a model
            # that learns the squares within the 12 steps.
            "--set", "trainer.precision=64-true", "--set", "optimizer.name=sgd", "--lr", "0.1",
            "--set", "loss.pos_weight=15", "--no-progress", "--accelerator", "cpu", "--set", "trainer.log_every_n_steps=1",
            "--set", "scheduler.name=none", "--set", "data.num_workers=0"]


def _torchrun(data: Path, out: Path, batch: int, epochs: int = EPOCHS) -> list[subprocess.Popen]:
    """Two torchrun agents ("nodes"), one worker each, meeting at a c10d rendezvous on 127.0.0.1."""
    port, rdzv_id = free_port(), uuid.uuid4().hex[:8]
    procs = []
    for node in (0, 1):
        log = open(out.parent / f"{out.name}-node{node}.log", "w")  # noqa: SIM115 - closed with the process
        cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id,
               "--local-addr", "127.0.0.1", "--max-restarts", "0", "-m", "asset.cli",
               *_train_args(data, out, batch, epochs), "--devices", "1", "--num-nodes", "2", "--strategy", "ddp"]
        procs.append(subprocess.Popen(cmd, env=base_env(), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    return procs


def _wait_all(procs, timeout: float) -> list[int | None]:
    """Exit codes, None for a launcher that had not ended within the timeout (then killed with its workers)."""
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return codes


def _logs(out: Path) -> str:
    return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-2500:]}"
                     for p in sorted(out.parent.glob(f"{out.name}-*.log")))


def _card(out: Path) -> dict:
    return json.loads((out / "model.json").read_text())


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "tensorboard" not in p.parts}


def _close(a: float, b: float, tol: float) -> bool:
    return a is not None and b is not None and math.isfinite(a) and abs(a - b) <= tol


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_dataset(root, n_train=30, n_test=4)
    doc = json.loads((data / "dataset.json").read_text())
    n_train = sum(1 for s in doc["samples"] if s["split"] == "train")
    n_val = sum(1 for s in doc["samples"] if s["split"] == "val")
    assert n_train % 2 == 0 and n_val % 2 == 0, "even splits: each rank takes half of every batch, unpadded"
    single = root / "single"
    r = subprocess.run([*ASSET, *_train_args(data, single, n_train)], env=base_env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = root / "ddp"
    codes = _wait_all(_torchrun(data, ddp, n_train // 2), timeout=900)
    assert codes == [0, 0], _logs(ddp)
    return {"root": root, "data": data, "n_train": n_train, "n_val": n_val, "single": single, "ddp": ddp}


def test_two_torchrun_nodes_equal_one_process(runs):
    a, b = _card(runs["single"]), _card(runs["ddp"])
    assert a["training"]["global_steps"] == b["training"]["global_steps"] == EPOCHS  # one global batch per epoch
    assert a["metrics"]["val"]["accuracy"] >= 0.9 and a["metrics"]["val"]["pixel_iou"] > 0.2, a["metrics"]  # it learnt
    for key in ("accuracy", "pixel_iou", "ap", "image_threshold"):
        assert _close(a["metrics"]["val"][key], b["metrics"]["val"][key], 1e-6), (key, a["metrics"], b["metrics"])
    ha, hb = a["training"]["val_history"], b["training"]["val_history"]
    assert [h["epoch"] for h in ha] == [h["epoch"] for h in hb] == list(range(EPOCHS))
    assert all(_close(x["iou"], y["iou"], 1e-6) for x, y in zip(ha, hb)), (ha, hb)
    # the weights themselves: same start (same seed), same data per step, global batch-norm statistics, gradients
    # averaged across the two ranks
    import torch

    wa = torch.load(runs["single"] / "weights.pt", weights_only=True)
    wb = torch.load(runs["ddp"] / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    keys = [k for k in wa if wa[k].is_floating_point()]
    diff = torch.cat([(wa[k].float() - wb[k].float()).flatten() for k in keys]).norm()
    rel = float(diff / torch.cat([wa[k].float().flatten() for k in keys]).norm())
    assert rel < 1e-6, rel
    print(f"\nsingle vs 2-node DDP: val accuracy {a['metrics']['val']['accuracy']:.4f} / "
          f"{b['metrics']['val']['accuracy']:.4f}, pixel IoU {a['metrics']['val']['pixel_iou']:.4f} / "
          f"{b['metrics']['val']['pixel_iou']:.4f}, AP {a['metrics']['val'].get('ap')} / {b['metrics']['val'].get('ap')}, "
          f"relative weight difference {rel:.1e}")


def test_only_rank_zero_wrote(runs):
    """The DDP model directory holds exactly the files of the single-process one: no second log, no rank-1 files,
    and every file is covered by SHA256SUMS."""
    from asset import modeldir

    assert _files(runs["ddp"]) == _files(runs["single"])
    modeldir.verify(runs["ddp"])
    log = (runs["ddp"] / "logs" / "train.log").read_text()
    assert log.count("model written to") == 1 and log.count("training unet/mobilenet_v2") == 1


def test_killed_rank_fails_the_run_cleanly_and_it_resumes(runs):
    out = runs["root"] / "killed"
    procs = _torchrun(runs["data"], out, runs["n_train"] // 2, epochs=30)
    last = out / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 600
        while not last.exists():
            assert all(p.poll() is None for p in procs), _logs(out)
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.1)
        workers = [c for c in psutil.Process(procs[1].pid).children(recursive=True) if "asset.cli" in " ".join(c.cmdline())]
        assert len(workers) == 1, workers
        workers[0].send_signal(signal.SIGKILL)
        t = time.monotonic()
        codes = _wait_all(procs, timeout=180)
    finally:
        _wait_all(procs, timeout=0.1)
    assert None not in codes, f"a launcher still ran 180 s after rank 1 was killed:\n{_logs(out)}"
    assert codes[0] != 0 and codes[1] != 0, (codes, _logs(out))
    print(f"\nrank 1 killed: both agents exited ({codes}) {time.monotonic() - t:.1f} s later")
    # no model card, no weights: nothing that could pass for a finished model
    assert not (out / "model.json").exists() and not (out / "weights.pt").exists()
    from asset import modeldir
    from asset.modeldir import ModelDirError

    with pytest.raises(ModelDirError):
        modeldir.verify(out)
    # what is there is a run that resumes, here on one process, for one more epoch
    import torch

    done = int(torch.load(last, weights_only=True, map_location="cpu")["epoch"]) + 1
    r = subprocess.run([*ASSET, "train", "--resume", str(out), "--epochs", str(done + 1), "--devices", "1",
                        "--num-nodes", "1",
                        "--strategy", "auto", "--no-progress"], env=base_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _card(out)["training"]["resumed"] is True
    modeldir.verify(out)


def test_srun_two_tasks_on_slurm(slurm, runs):
    """The same DDP training launched by SLURM: srun starts both ranks, Lightning reads SLURM's environment."""
    out = runs["root"] / "srun"
    args = " ".join([*ASSET, *_train_args(runs["data"], out, runs["n_train"] // 2),
                     "--devices", "2", "--num-nodes", "1", "--strategy", "ddp"])
    env = {**slurm.env, "MASTER_PORT": str(free_port())}
    job = slurm.sbatch("--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                       f"--output={runs['root'] / 'srun-%j.out'}", "--job-name=asset-ddp",
                       f"--wrap=srun --kill-on-bad-exit=1 {args}", env=env)
    slurm.wait(job, timeout=900, what="srun DDP")
    log = (runs["root"] / f"srun-{job}.out").read_text(errors="replace")
    assert slurm.states(job)[job] == ("COMPLETED", "0:0"), log[-3000:]
    assert "MEMBER: 2/2" in log or "GLOBAL_RANK: 1" in log, log[-3000:]  # Lightning saw both ranks
    a, b = _card(runs["ddp"]), _card(out)
    for key in ("accuracy", "pixel_iou"):  # the same two-rank computation as under torchrun
        assert _close(a["metrics"]["val"][key], b["metrics"]["val"][key], 1e-6), (key, a["metrics"], b["metrics"])
    assert _files(out) == _files(runs["ddp"])
