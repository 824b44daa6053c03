"""`asset sweep` end to end on a tiny dataset: a grid with a skipped and a failing combination, two shards, one
killed with SIGKILL in the middle of a model (a real subprocess) and resumed; --status; the SLURM script in a dry
run; then `asset report` from that sweep plus a hand-made benchmark of a second device, checked cell by cell, and
the same report from a damaged copy of the sweep (it still builds and says what it left out)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asset import modeldir
from asset.cli import main
from asset.sweep.grid import Job, load_spec, parse_shard, shard_jobs
from asset.sweep.run import sweep_status
from tests.asset.helpers import make_dataset

SWEEP_FILE = """\
archs: [unet, pan, linknet, deeplabv3, dpt]   # dpt: skipped (ViT encoders only); pan: fails (needs 128x128 inputs)
encoders: [mobilenet_v2]
train:
  trainer: {max_epochs: 4, log_every_n_steps: 1, enable_progress_bar: false}
  model: {encoder_weights: none}
  data: {batch_size: 8}
benchmark: {min_iter: 3, min_seconds: 0.05, max_seconds: 2.0}
"""
# grid order: unet (0), pan (1), linknet (2), deeplabv3 (3): shard 0/2 = unet, linknet; shard 1/2 = pan, deeplabv3
RPI4 = {"unet--mobilenet_v2": 90.0, "linknet--mobilenet_v2": 30.0, "deeplabv3--mobilenet_v2": 55.0}


def _speed_doc(arch: str, encoder: str, ms: float) -> dict:
    """What `asset benchmark --speed-only` writes on a device, by hand."""
    return {"schema": "asset-benchmark-speed/1", "device": {"description": "Raspberry Pi 4 Model B Rev 1.4"},
            "model": {"arch": arch, "encoder": encoder}, "input": {"size": [32, 32]},
            "rows": [{"backend": "onnxruntime", "precision": "fp32", "batch": 1, "status": "ok", "reason": "",
                      "ms": ms, "p50_ms": ms, "fps": 1000 / ms}]}


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, limit: float = 300) -> None:
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() - t < limit, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Runs the sweep as described in the module doc; returns its paths and what was seen on the way."""
    root = tmp_path_factory.mktemp("sweep")
    data = make_dataset(root)
    other = make_dataset(root / "other", n_train=6, n_test=10, seed=1, name="tiny2")  # cross-dataset test set
    cfg = root / "sweep.yaml"
    cfg.write_text(SWEEP_FILE)
    out = root / "s"
    seen: dict = {}
    args = ["sweep", "--data", str(data), "--out", str(out), "--config", str(cfg), "--test-data", str(other)]
    # shard 1/2 in a real process, killed while deeplabv3 trains (after pan failed: the failure did not stop it)
    log = root / "shard1.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "asset.cli", *args, "--shard", "1/2"], stdout=fh, stderr=fh,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deeplab = out / "tiny" / "deeplabv3--mobilenet_v2"
            _wait_for(deeplab / "model" / "checkpoints" / "last.ckpt", proc, log)
            seen["while_running"] = {k: s for k, s, _ in sweep_status(out)[0]}
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    seen["returncode"] = proc.returncode
    seen["card_at_kill"] = (deeplab / "model" / "model.json").exists()
    seen["after_kill"] = {k: s for k, s, _ in sweep_status(out)[0]}
    seen["pan_result"] = json.loads((out / "tiny" / "pan--mobilenet_v2" / "result.json").read_text())
    # shard 0/2 in this process, then shard 1/2 again: resumes deeplabv3, leaves pan failed
    seen["rc0"] = main([*args, "--shard", "0/2"])
    unet = out / "tiny" / "unet--mobilenet_v2"
    seen["unet_result_mtime"] = (unet / "result.json").stat().st_mtime_ns
    seen["unet_card"] = (unet / "model" / "model.json").read_text()
    seen["rc1"] = main([*args, "--shard", "1/2"])
    seen["rc0_again"] = main([*args, "--shard", "0/2"])  # everything of shard 0 is done: nothing is trained
    return {"root": root, "data": data, "cfg": cfg, "out": out, "seen": seen}


def test_sweep_killed_mid_way_resumes_and_shards_split_the_grid(sweep, capsys):
    seen, out = sweep["seen"], sweep["out"]
    assert seen["returncode"] == -signal.SIGKILL
    assert seen["while_running"]["tiny/deeplabv3--mobilenet_v2"] == "running"
    assert seen["while_running"]["tiny/pan--mobilenet_v2"] == "failed"
    assert seen["while_running"]["tiny/unet--mobilenet_v2"] == "to do"  # shard 0's: not touched by shard 1
    assert not seen["card_at_kill"]
    assert seen["after_kill"]["tiny/deeplabv3--mobilenet_v2"] == "interrupted"  # stale lock of a dead process
    assert "128x128" in seen["pan_result"]["reason"] and seen["pan_result"]["step"] == "train"
    assert seen["rc0"] == 0 and seen["rc1"] == 1  # 1: a failed model in the share
    deeplab = json.loads((out / "tiny" / "deeplabv3--mobilenet_v2" / "result.json").read_text())
    assert deeplab["status"] == "done" and deeplab["training"]["resumed"] is True
    assert deeplab["training"]["epochs"] == 4
    assert "resuming" in (out / "tiny" / "deeplabv3--mobilenet_v2" / "model" / "logs" / "train.log").read_text()
    # a finished model is never trained again
    unet = out / "tiny" / "unet--mobilenet_v2"
    assert seen["rc0_again"] == 0
    assert (unet / "result.json").stat().st_mtime_ns == seen["unet_result_mtime"]
    assert (unet / "model" / "model.json").read_text() == seen["unet_card"]
    for name in ("unet", "linknet", "deeplabv3"):
        res = json.loads((out / "tiny" / f"{name}--mobilenet_v2" / "result.json").read_text())
        assert res["status"] == "done", res.get("reason")
        assert 0 <= res["metrics"]["test"]["accuracy"] <= 1 and res["metrics"]["test"]["images"] == 12
        assert res["metrics"]["cross_test"]["images"] == 10 and res["metrics"]["cross_test"]["dataset"]["name"] == "tiny2"
        assert res["metrics"]["val"]["accuracy"] is not None
        assert [r["backend"] for r in res["benchmark"]["rows"]] == ["pytorch"]
        assert res["benchmark"]["rows"][0]["p50_ms"] > 0
        modeldir.verify(out / "tiny" / f"{name}--mobilenet_v2" / "model")
        assert not (out / "tiny" / f"{name}--mobilenet_v2" / "lock").exists()
    assert not (out / "tiny" / "dpt--mobilenet_v2").exists()
    capsys.readouterr()
    assert main(["sweep", "--status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 done, 1 failed, 1 skipped" in text
    assert "skipped      tiny/dpt--mobilenet_v2" in text and "timm ViT encoders" in text


def test_shards_are_disjoint_and_cover_the_grid():
    jobs = [Job("d", a, "e") for a in "abcdefg"]
    parts = [shard_jobs(jobs, (i, 3)) for i in range(3)]
    assert sorted(j.arch for p in parts for j in p) == list("abcdefg")
    assert [j.arch for j in parts[1]] == ["b", "e"]
    assert shard_jobs(jobs, (1, 3)) == parts[1]  # deterministic
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (0, 1)


@pytest.mark.parametrize("bad", ["4/4", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_refused(bad, tmp_path, capsys):
    assert main(["sweep", "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--archs", "unet",
                 "--encoders", "mobilenet_v2", f"--shard={bad}"]) == 2
    assert "--shard" in capsys.readouterr().err


def test_bad_sweep_file_refused_before_training(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("archs: [unet]\nencoders: [mobilenet_v2]\ntrain: {trainer: {max_epoch: 3}}\n")
    assert main(["sweep", "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--config", str(cfg)]) == 2
    assert "max_epoch" in capsys.readouterr().err
    cfg.write_text("archs: [unet]\nencoders: [mobilenet_v2]\ngrid: 3\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_spec(cfg)
    assert main(["sweep", "--status", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_slurm_script_dry_run(sweep, tmp_path):
    script = tmp_path / "sweep.sbatch"
    args = ["sweep", "--data", str(sweep["data"]), "--out", str(sweep["out"]), "--config", str(sweep["cfg"])]
    assert main([*args, "--slurm", "2", "--slurm-script", str(script)]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text and "#SBATCH --gres=gpu:1" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "ASSET": f"{sys.executable} -m asset.cli"}
    runs = {}
    for task in ("0", "1"):
        r = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True,
                           env={**env, "SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_COUNT": "2"})
        assert r.returncode == 0, r.stderr[-2000:]
        runs[task] = r.stderr
    assert "shard 0/2: 2 models" in runs["0"] and "would run tiny/unet--mobilenet_v2: done" in runs["0"]
    assert "would run tiny/linknet--mobilenet_v2" in runs["0"] and "pan--" not in runs["0"].split("grid:")[1]
    assert "would run tiny/pan--mobilenet_v2: failed" in runs["1"]
    assert "would run tiny/deeplabv3--mobilenet_v2: done" in runs["1"]
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                       env={k: v for k, v in env.items() if not k.startswith("SLURM_")})
    assert r.returncode != 0 and "sbatch" in r.stderr


# ----------------------------------------------------------------------------- the report from this sweep
def _bench_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rpi4"
    d.mkdir()
    for name, ms in RPI4.items():
        arch, enc = name.split("--")
        (d / f"{arch}.json").write_text(json.dumps(_speed_doc(arch, enc, ms)))
    return d


def _expected(out: Path) -> dict:
    """Per model, from the files the sweep wrote: the numbers the report must show."""
    exp = {}
    for name, shown in (("unet", "MobileNetV2-Unet"), ("linknet", "MobileNetV2-Linknet"),
                        ("deeplabv3", "MobileNetV2-DeepLabV3")):
        jdir = out / "tiny" / f"{name}--mobilenet_v2"
        res = json.loads((jdir / "result.json").read_text())
        bench = json.loads((jdir / "model" / "evaluations" / "benchmark-sweep.json").read_text())
        m = res["metrics"]
        exp[shown] = {"test": m["cross_test"]["accuracy"], "test_iou": m["cross_test"]["pixel_iou"], "val": m["val"]["accuracy"],
                      "val_iou": m["val"]["pixel_iou"], "host": bench["rows"][0]["p50_ms"],
                      "rpi4": RPI4[f"{name}--mobilenet_v2"]}
    return exp


def _row(rank: int, name: str, e: dict) -> list[str]:
    return [str(rank), f"{100 * e['test']:.2f}", f"{e['test_iou']:.3f}", f"{100 * e['val']:.2f}", f"{e['val_iou']:.3f}",
            name, f"{e['host']:.2f}", f"{e['rpi4']:.2f}"]


def test_report_tables_cell_by_cell(sweep, tmp_path, capsys):
    out = sweep["out"]
    bench = _bench_dir(tmp_path)
    rep = tmp_path / "report"
    assert main(["report", str(out), "--benchmarks", f"rpi4={bench}", "--out", str(rep), "--budget-ms", "60",
                 "--device", "rpi4"]) == 0
    data = json.loads((rep / "report.json").read_text())
    exp = _expected(out)
    assert data["columns"] == ["sweep-host:pytorch", "rpi4:onnxruntime"]
    ds = data["datasets"]["tiny"]
    assert ds["top_accuracy"]["headers"] == ["Rank", "Test acc (%)", "Test IoU", "Val acc (%)", "Val IoU",
                                             "Architecture", "sweep-host:pytorch (ms)", "rpi4:onnxruntime (ms)"]
    by_acc = sorted(exp, key=lambda n: (-exp[n]["test"], -exp[n]["test_iou"], -exp[n]["val"], n))
    assert ds["top_accuracy"]["rows"] == [_row(i + 1, n, exp[n]) for i, n in enumerate(by_acc)]
    by_ms = sorted(exp, key=lambda n: (exp[n]["host"], n))
    assert ds["top_speed"]["rows"] == [_row(i + 1, n, exp[n]) for i, n in enumerate(by_ms)]
    md = (rep / "report.md").read_text()
    assert "Test columns: tiny2 test (cross-dataset protocol)." in md
    for row in ds["top_accuracy"]["rows"]:
        assert "| " + " | ".join(row) + " |" in md
    tests = sorted(e["test"] for e in exp.values())
    assert ds["summary"]["test"]["median"] == pytest.approx(tests[1])
    assert ds["summary"]["val"]["mean"] == pytest.approx(sum(e["val"] for e in exp.values()) / 3)
    # Pareto front on rpi4, by hand: walk from the fastest, keep a model when it beats every faster one
    front, best = [], -1.0
    for n in sorted(exp, key=lambda n: exp[n]["rpi4"]):
        if exp[n]["test"] > best:
            front.append(n)
            best = exp[n]["test"]
    assert ds["pareto"]["rpi4:onnxruntime"] == front
    # recommendation within 60 ms: linknet (30 ms) and deeplabv3 (55 ms) qualify; unet (90 ms) does not
    inside = sorted(["MobileNetV2-Linknet", "MobileNetV2-DeepLabV3"],
                    key=lambda n: (-exp[n]["test"], -exp[n]["test_iou"], exp[n]["rpi4"]))
    rec = ds["recommendation"]
    assert rec["best"] == inside[0] and rec["runner_up"] == inside[1] and rec["device"] == "rpi4:onnxruntime"
    u = exp["MobileNetV2-Unet"]
    assert rec["better_over_budget"] == ("MobileNetV2-Unet" if u["test"] > exp[inside[0]]["test"] else None)
    # Spearman by the textbook formula (no ties: three distinct times on each device)
    names = list(exp)
    rank = lambda key: {n: sorted(names, key=lambda m: exp[m][key]).index(n) + 1 for n in names}  # noqa: E731
    rh, rr = rank("host"), rank("rpi4")
    rho = 1 - 6 * sum((rh[n] - rr[n]) ** 2 for n in names) / (3 * (9 - 1))
    assert ds["spearman"] == [{"a": "sweep-host:pytorch", "b": "rpi4:onnxruntime", "n": 3, "rho": pytest.approx(rho)}]
    assert data["failed"][0][0] == "tiny/pan--mobilenet_v2"
    html = (rep / "report.html").read_text()
    assert "data:image/png;base64," in html and "src='http" not in html and "<link" not in html
    assert (rep / "plots" / "tiny-rpi4_onnxruntime.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_from_damaged_sweep_says_what_it_left_out(sweep, tmp_path, capsys):
    out = shutil.copytree(sweep["out"], tmp_path / "s")
    (out / "tiny" / "linknet--mobilenet_v2" / "result.json").write_text("{not json")
    shutil.rmtree(out / "tiny" / "deeplabv3--mobilenet_v2" / "model")
    bench = _bench_dir(tmp_path)
    (bench / "x.json").write_text(json.dumps({"schema": "someone-else/3", "rows": []}))
    (bench / "y.json").write_text(json.dumps(_speed_doc("fpn", "resnet34", 12.0)))
    (bench / "z.json").write_text(json.dumps(_speed_doc("unet", "mobilenet_v2", 91.5)))  # same device, other figure
    rep = tmp_path / "report"
    assert main(["report", str(out), "--benchmarks", f"rpi4={bench}", "--out", str(rep)]) == 0
    err = capsys.readouterr().err
    data = json.loads((rep / "report.json").read_text())
    left = "\n".join(data["left_out"])
    assert "linknet--mobilenet_v2: result.json is corrupt" in left
    assert "deeplabv3--mobilenet_v2" in left
    assert "x.json: unknown schema 'someone-else/3'" in left
    assert "y.json: model fpn/resnet34 is not in the sweep" in left
    assert "conflicting figures for unet/mobilenet_v2 (tiny) on rpi4:onnxruntime" in left
    assert "left out:" in err and "dpt" not in left  # skipped, not missing
    assert data["skipped"][0][0] == "tiny/dpt--mobilenet_v2"
    ds = data["datasets"]["tiny"]
    assert [r[5] for r in ds["top_accuracy"]["rows"]] == ["MobileNetV2-Unet"]
    row = ds["top_accuracy"]["rows"][0]
    assert row[7] == "- [1]" and ds["footnotes"][0].startswith("conflicting figures")
    md = (rep / "report.md").read_text()
    assert "## Left out" in md and "[1] conflicting figures" in md


def test_training_settings_layering(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("archs: [unet]\nencoders: [mobilenet_v2, resnet18]\n"
                   "train: {trainer: {max_epochs: 7}, optimizer: {lr: 0.01}}\n"
                   "per_encoder: {resnet18: {model: {encoder_weights: none}, optimizer: {lr: 0.02}}}\n"
                   "datasets: {ksdd: {train: {optimizer: {lr: 0.03}}, test_data: /x}}\n")
    from asset.sweep.grid import training_config

    spec = load_spec(cfg, overrides=["trainer.max_epochs=9"])
    a = training_config(spec, "dagm", "unet", "mobilenet_v2", "/d")
    assert (a["trainer"]["max_epochs"], a["optimizer"]["lr"], a["model"]["encoder_weights"]) == (9, 0.01, "imagenet")
    b = training_config(spec, "dagm", "unet", "resnet18", "/d")
    assert (b["optimizer"]["lr"], b["model"]["encoder_weights"], b["model"]["encoder"]) == (0.02, "none", "resnet18")
    c = training_config(spec, "ksdd", "linknet", "resnet18", "/d")
    assert (c["optimizer"]["lr"], c["model"]["arch"], c["data"]["path"]) == (0.03, "linknet", "/d")
