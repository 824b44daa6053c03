"""Per-dataset recipes (asset/configs/{dagm,kolektorsdd,kolektorsdd2}.yaml), `make train-DATASET`, and
`asset evaluate` across datasets: a grayscale KolektorSDD model on colour KolektorSDD2 images and back."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from asset import modeldir
from asset.cli import main
from asset.config import load_config
from asset.training.train import check_training_keys
from tests import REPO as ROOT

RECIPES = ("dagm", "kolektorsdd", "kolektorsdd2")
TINY = ["--no-progress", "--epochs", "1", "--set", "trainer.max_time=null", "--set", "data.batch_size=4",
        "--set", "trainer.log_every_n_steps=1", "--set", "data.validate=false"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_valid_sized_for_cpu_and_one_override_for_gpu(name):
    path = ROOT / "asset" / "configs" / f"{name}.yaml"
    cfg = load_config(path)
    check_training_keys(cfg)
    assert cfg["trainer"]["max_time"] == "00:00:25:00"  # the 2-core budget
    assert cfg["data"]["oversample"] == 0.5 and cfg["checkpoint"]["monitor"] == "val/ap_iou"
    assert all(v % 32 == 0 for v in cfg["data"]["size"])  # every SMP decoder takes multiples of 32
    gpu = load_config(path, ["trainer.max_time=null"])
    assert gpu["trainer"]["max_time"] is None and gpu["trainer"]["accelerator"] == "auto"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("name", RECIPES)
def test_make_target_runs_the_recipe(name):
    done = subprocess.run(["make", "-n", f"train-{name}", "DATA=data/x/latest"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert f"asset train --config asset/configs/{name}.yaml --data \"data/x/latest\" --out \"models/{name}\"" \
        in done.stdout
    assert "set DATA=" in done.stdout  # the recipe refuses to run without DATA


@pytest.fixture(scope="module")
def kolektor_sets(tmp_path_factory):
    """A tiny KolektorSDD-like (grayscale) and KolektorSDD2-like (colour) set from the synthetic datatool."""
    from datatools.cli import main as datatool

    root = tmp_path_factory.mktemp("kolektor")
    out = {}
    for mode, extra in (("kolektorsdd", ["--images", "24", "--size", "64", "--defect-rate", "0.3"]),
                        ("kolektorsdd2", ["--images", "24", "--defect-rate", "0.3"])):
        assert datatool(["convert", "synthetic", "--mode", mode, "--out", str(root / "data"), "--workers", "1",
                         "--val-fraction", "0.3", *extra]) == 0
        out[mode] = root / "data" / f"synthetic-{mode}" / "latest"
    return out


def test_recipes_train_and_evaluate_across_datasets(kolektor_sets, tmp_path, capsys):
    gray, colour = kolektor_sets["kolektorsdd"], kolektor_sets["kolektorsdd2"]
    models = {}
    for name, data in (("kolektorsdd", gray), ("kolektorsdd2", colour)):
        models[name] = tmp_path / name
        assert main(["train", "--config", str(ROOT / "asset" / "configs" / f"{name}.yaml"), "--data", str(data),
                     "--out", str(models[name]), "--set", "data.size=[160,64]", *TINY]) == 0
        card = modeldir.verify(models[name])
        assert card["input"]["channels"] == (1 if name == "kolektorsdd" else 3)
        assert card["training"]["loss"] == "bce_dice" and card["training"]["oversample"] == 0.5
    capsys.readouterr()
    # the published KolektorSDD protocol: the KolektorSDD model on the KolektorSDD2 test split, and back
    for model, data, other in ((models["kolektorsdd"], colour, gray), (models["kolektorsdd2"], gray, colour)):
        out = tmp_path / f"cross-{model.name}"
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        doc = json.loads((Path(data) / "dataset.json").read_text())
        assert metrics["dataset"]["name"] == doc["name"] != json.loads((Path(other) / "dataset.json").read_text())["name"]
        assert metrics["images"] == doc["splits"]["test"]["images"]
        assert metrics["defective_images"] == doc["splits"]["test"]["defective"]
        preds = json.loads((out / "predictions.json").read_text())
        assert len(preds) == metrics["images"] and all(0.0 <= p["fraction"] <= 1.0 for p in preds)
