"""Full train / evaluate / resume cycles on 32x32 datasets, and bad input refused before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asset import modeldir
from asset.cli import main
from tests.asset.conftest import FAST
from tests.asset.helpers import make_dataset


def test_model_directory_is_self_describing(trained_model, tiny_dataset):
    card = modeldir.verify(trained_model)
    assert card["arch"] == "unet" and card["encoder"] == "mobilenet_v2"
    assert card["input"]["channels"] == 1 and card["input"]["size_policy"]["divisor"] == 32
    assert card["dataset"]["version"] == Path(tiny_dataset).name
    assert set(card["metrics"]["val"]) >= {"pixel_iou", "accuracy", "ap", "auroc", "confusion_matrix"}
    assert card["versions"]["torch"] and card["training"]["epochs"] == 3
    for rel in ("weights.pt", "config.yaml", "logs/csv/metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (trained_model / rel).is_file(), rel
    assert list((trained_model / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_evaluate_applies_calibrated_threshold_and_override(trained_model, tiny_dataset, tmp_path):
    card = modeldir.verify(trained_model)
    t = card["thresholds"]["image"]
    assert t == card["thresholds"]["image_calibration"]["value"]
    assert main(["evaluate", "--model", str(trained_model), "--data", str(tiny_dataset), "--split", "val",
                 "--out", str(tmp_path / "a")]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["image_threshold"] == t and m["accuracy"] == card["metrics"]["val"]["accuracy"]
    preds = json.loads((tmp_path / "a" / "predictions.json").read_text())
    decided = sum((p["fraction"] >= t) for p in preds)
    assert m["confusion_matrix"]["tp"] + m["confusion_matrix"]["fp"] == decided
    assert (tmp_path / "a" / "report.md").read_text().startswith("# unet/mobilenet_v2")
    # override: everything with a fraction >= 0 is defective at threshold 0
    assert main(["evaluate", "--model", str(trained_model), "--data", str(tiny_dataset), "--split", "test",
                 "--out", str(tmp_path / "b"), "--image-threshold", "0"]) == 0
    m0 = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m0["image_threshold"] == 0 and m0["recall"] == 1.0 and m0["confusion_matrix"]["tn"] == 0
    modeldir.verify(trained_model)  # evaluating does not break the checksums


def test_evaluate_refuses_tampered_model(trained_model, tiny_dataset, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained_model, bad)
    with open(bad / "weights.pt", "ab") as fh:
        fh.write(b"x")
    assert main(["evaluate", "--model", str(bad), "--data", str(tiny_dataset)]) == 2
    assert "checksums do not match" in capsys.readouterr().err
    card = json.loads((bad / "model.json").read_text())
    card["format"] = "defect-model/99"
    (bad / "model.json").write_text(json.dumps(card))
    assert main(["evaluate", "--model", str(bad), "--data", str(tiny_dataset)]) == 2
    assert "another version" in capsys.readouterr().err


def test_same_seed_same_metrics(tiny_dataset, tmp_path):
    from asset.config import load_config
    from asset.training.train import train

    cards = []
    for name in ("a", "b"):
        cfg = load_config(None, ["trainer.enable_progress_bar=false", "data.batch_size=8"],
                          {"data.path": str(tiny_dataset), "model.encoder_weights": "none", "model.arch": "linknet",
                           "trainer.max_epochs": 2, "seed": 3})
        cards.append(train(cfg, tmp_path / name))
    assert cards[0]["metrics"] == cards[1]["metrics"]
    assert cards[0]["thresholds"]["image"] == cards[1]["thresholds"]["image"]


def test_rgb_dataset_of_varying_sizes(tmp_path):
    data = make_dataset(tmp_path, n_train=9, n_test=3, channels=3, name="rgb", sizes=[(32, 32), (40, 24), (30, 50)])
    out = tmp_path / "m"
    assert main(["train", "--data", str(data), "--out", str(out), "--arch", "fpn", "--epochs", "1", *FAST]) == 0
    card = modeldir.verify(out)
    assert card["input"]["channels"] == 3 and card["input"]["size_policy"]["size"] == [64, 64]
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--out", str(tmp_path / "e")]) == 0


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 480) -> None:
    """Wait for `path` while `proc` lives; the deadline only catches a hang (a loaded machine can take minutes)."""
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() - t < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_resume_after_sigkill_continues(tmp_path):
    data = make_dataset(tmp_path, n_train=60, n_test=4)
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "asset.cli", "train", "--data", str(data), "--out", str(out), "--epochs", "4",
           "--arch", "linknet", *FAST, "--set", "data.batch_size=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(out / "checkpoints" / "last.ckpt", proc)  # epoch 0 finished
        time.sleep(0.5)  # now inside epoch 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.json").exists()
    import torch

    done = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"]
    assert done in (0, 1)
    rows_before = (out / "logs" / "csv" / "metrics.csv").read_text().count("\n")
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    card = modeldir.verify(out)
    assert card["training"]["resumed"] and card["training"]["epochs"] == 4
    text = (out / "logs" / "csv" / "metrics.csv").read_text()
    assert text.count("\n") > rows_before
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(text)))
    val_epochs = sorted(int(r["epoch"]) for r in rows if r.get("val/iou"))
    assert val_epochs == [0, 1, 2, 3]  # the epochs finished before the kill are kept, none is lost or repeated
    assert "resuming" in (out / "logs" / "train.log").read_text()
    # nothing left to resume when finished, unless more epochs are asked for
    assert main(["train", "--resume", str(out), "--no-progress", "--epochs", "5"]) == 0
    assert modeldir.verify(out)["training"]["epochs"] == 5


def test_last_checkpoint_is_the_latest_epoch_even_without_a_new_best(tmp_path):
    """--resume starts from checkpoints/last.ckpt: it must hold the latest epoch, not the best one. A pixel
    threshold of 1 predicts nothing, so val/iou stays 0 and no epoch after the first is a new best."""
    data = make_dataset(tmp_path, n_train=16, n_test=2)
    out = tmp_path / "m"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "3", *FAST,
                 "--set", "checkpoint.monitor=val/iou", "--pixel-threshold", "1.0"]) == 0
    import torch

    ckpts = out / "checkpoints"
    assert torch.load(ckpts / "best.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 2
    # resuming with one more epoch trains epoch 3 only, from the epoch-2 state
    assert main(["train", "--resume", str(out), "--no-progress", "--epochs", "4"]) == 0
    card = modeldir.verify(out)
    assert card["training"]["epochs"] == 4 and [r["epoch"] for r in card["training"]["val_history"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("args,needle", [
    (["--data", "{missing}"], "no such dataset directory"),
    (["--data", "{broken}"], "fails validation"),
    (["--arch", "unet4"], "unknown architecture"),
    (["--encoder", "resnet35"], "unknown encoder"),
    (["--arch", "pan", "--encoder", "inceptionv4"], "no dilated mode"),
    (["--epochs", "-1"], "max_epochs"),
    (["--image-threshold", "1.5"], "thresholds.image"),
    (["--pixel-threshold", "-0.1"], "thresholds.pixel"),
    (["--lr", "0"], "optimizer.lr"),
    (["--set", "optimizer.nme=sgd"], "unknown config key"),
    (["--encoder-weights", "imagenet"], "local weights file"),
])
def test_bad_input_refused_before_work(args, needle, tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_dataset, broken / "x")
    next((broken / "x" / "images").rglob("*.png")).unlink()
    args = [a.format(missing=tmp_path / "nope", broken=broken / "x") for a in args]
    base = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "m"), "--encoder-weights", "none",
            "--no-progress"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err, err
    assert not (tmp_path / "m" / "checkpoints").exists()


def test_resume_without_run_and_existing_out_refused(trained_model, tiny_dataset, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no config.yaml: not a directory made by `asset train`" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_dataset), "--out", str(trained_model), *FAST]) == 2
    assert "--resume" in capsys.readouterr().err
