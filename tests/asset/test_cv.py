"""`asset cv`: folds by object, the fold datasets, pooled out-of-fold figures, resume."""

from __future__ import annotations

import json

import pytest

from asset.cv import CVError, fold_document, fold_of_groups, run_cv, summarise, write_fold_dataset
from tests.asset.helpers import make_dataset


@pytest.fixture(scope="module")
def grouped_dataset(tmp_path_factory):
    # 12 objects of 3 parts (train 24 + test 12 images); every object holds defective and OK parts
    return make_dataset(tmp_path_factory.mktemp("cv"), n_train=24, n_test=12, size=32, parts_per_object=3,
                        name="objects")


def _doc(path):
    return json.loads((path / "dataset.json").read_text())


def test_folds_keep_objects_whole_and_spread_defective_objects(grouped_dataset):
    doc = _doc(grouped_dataset)
    folds = fold_of_groups(doc["samples"], 3)
    assert sorted(set(folds.values())) == [0, 1, 2]
    assert set(folds) == {s["group"] for s in doc["samples"]}
    for k in range(3):
        fdoc = fold_document(doc, k, 3, folds, 0.25, seed=0)
        by_split = {}
        for s in fdoc["samples"]:
            by_split.setdefault(s["split"], set()).add(s["group"])
        assert by_split["test"] == {g for g, f in folds.items() if f == k}
        assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
        assert not (by_split["val"] & by_split["test"])
        assert all(any(s["defective"] for s in fdoc["samples"] if s["split"] == split) for split in by_split)


def test_too_many_folds_or_no_ok_object_is_refused():
    samples = [{"group": f"o{i}", "defective": i < 2} for i in range(6)]
    with pytest.raises(CVError, match="2 object"):
        fold_of_groups(samples, 3)
    with pytest.raises(CVError, match="at least 2"):
        fold_of_groups(samples, 1)
    with pytest.raises(CVError, match="no OK image"):
        fold_of_groups([{"group": f"o{i}", "defective": True} for i in range(4)], 2)


def test_fold_dataset_is_a_valid_version_that_links_the_images(grouped_dataset, tmp_path):
    from datatools.validate import validate_dataset

    doc = _doc(grouped_dataset)
    folds = fold_of_groups(doc["samples"], 2)
    fdoc = fold_document(doc, 1, 2, folds, 0.25, seed=0)
    path = write_fold_dataset(tmp_path, grouped_dataset, fdoc)
    assert path.name == fdoc["version"] and validate_dataset(path, progress=False) == []
    assert (path / "images").is_symlink()
    assert write_fold_dataset(tmp_path, grouped_dataset, fdoc) == path  # the same fold: reused
    assert fold_document(doc, 1, 2, folds, 0.25, seed=0)["version"] == fdoc["version"]  # a content version


def _run(fold, seed, test, fit):
    """A model's scored images: (defective, head score) for its test and its training images; the defect fraction
    is the head score / 10, so both rules rank alike."""
    images = []
    for split, values in (("test", test), ("train", fit)):
        for i, (defective, h) in enumerate(values):
            images.append({"id": f"{fold}-{split}-{i}", "split": split, "defective": defective,
                           "inter": 1 if defective else 0, "union": 2 if defective else 0, "defect_fraction": h / 10,
                           "by_rule": {"fraction": {"value": h / 10, "score": h / 10},
                                       "head": {"value": h, "score": h}}})
    return {"fold": fold, "seed": seed, "rules": ["fraction", "head"], "margin": "linear", "pixels": 100,
            "images": images, "train_seconds": 60.0}


def test_summary_pools_out_of_fold_predictions_and_calibrates_both_ways():
    fit = [(True, 0.9), (True, 0.8), (False, 0.1), (False, 0.2)]  # train+val: threshold half-way, 0.5
    runs = {
        (0, 0): _run(0, 0, [(True, 0.6), (False, 0.3), (False, 0.4)], fit),
        (1, 0): _run(1, 0, [(True, 0.45), (False, 0.05), (True, 0.7)], fit),  # 0.45: missed at 0.5
    }
    plan = {"folds": 2, "seeds": [0], "dataset": {"name": "x", "version": "v"}}
    out = summarise(plan, runs, "train+val")
    per = {(r["rule"], r["calibration"], r["fold"]): r for r in out["per_run"]}
    assert per[("head", "train+val", 0)]["threshold"] == pytest.approx(0.5)
    assert per[("head", "train+val", 1)]["found"] == 1 and per[("head", "train+val", 1)]["false_alarms"] == 0
    # out-of-fold: fold 1's threshold comes from fold 0's test images (0.4 OK, 0.6 defective -> 0.5)
    assert per[("head", "oof", 1)]["threshold"] == pytest.approx(0.5)
    pooled = {(r["rule"], r["calibration"]): r for r in out["pooled_per_seed"]}
    p = pooled[("head", "train+val")]
    assert (p["images"], p["defective"], p["found"], p["false_alarms"]) == (6, 3, 2, 0)
    assert p["ap"] == pytest.approx(1.0) and p["accuracy"] == pytest.approx(5 / 6)  # 0.45 ranks above every OK
    assert p["pixel_iou"] == pytest.approx(0.5)
    summary = {(r["rule"], r["calibration"]): r for r in out["summary"]}
    assert summary[("head", "train+val")]["per_fold"]["found"]["mean"] == pytest.approx(1.0)  # 1 of 1, 1 of 2
    assert summary[("fraction", "train+val")]["pooled"]["ap"]["mean"] == pytest.approx(1.0)
    assert "| head | train+val | pooled, per seed |" in __import__("asset.cv", fromlist=["markdown"]).markdown(out)


def test_cv_trains_scores_and_resumes(grouped_dataset, tmp_path, monkeypatch):
    from asset.config import load_config

    cfg = load_config(None, ["model.decision=head", "model.decision_channels=4", "model.arch=unet",
                             "model.encoder=mobilenet_v2", "trainer.max_epochs=1", "optimizer.lr=3e-3",
                             "loss.name=bce_dice", "model.encoder_weights=none", "data.batch_size=8",
                             "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"])
    out = run_cv(cfg, grouped_dataset, tmp_path / "cv", folds=2, seeds=1, val_fraction=0.25)
    assert out["runs_done"] == 2 == out["runs_planned"]
    rules = {(r["rule"], r["calibration"]) for r in out["summary"]}
    assert rules == {("fraction", "train+val"), ("fraction", "oof"), ("head", "train+val"), ("head", "oof")}
    pooled = [r for r in out["pooled_per_seed"] if r["rule"] == "head" and r["calibration"] == "train+val"]
    assert pooled[0]["images"] == 36  # every image once, predicted by the model that did not see its object
    for fold in (0, 1):
        scored = json.loads((tmp_path / "cv" / "runs" / f"fold{fold}-seed0" / "scores.json").read_text())
        test_groups = {r["id"] for r in scored["images"] if r["split"] == "test"}
        assert test_groups and scored["rules"] == ["fraction", "head"]
    assert (tmp_path / "cv" / "cv.md").read_text().startswith("# Cross-validation by object")

    # resumed: a model that lost its scores is scored again, a model interrupted after its first epoch resumes,
    # nothing finished is trained again
    import shutil

    import asset.training.train as training

    run0 = tmp_path / "cv" / "runs" / "fold0-seed0"
    (run0 / "scores.json").unlink()
    run1 = tmp_path / "cv" / "runs" / "fold1-seed0"
    (run1 / "scores.json").unlink()
    for name in ("model.json", "SHA256SUMS", "weights.pt"):
        (run1 / "model" / name).unlink()
    calls = []
    real_train = training.train
    monkeypatch.setattr(training, "train", lambda cfg, out, **kw: calls.append(kw) or real_train(cfg, out, **kw))
    again = run_cv(cfg, grouped_dataset, tmp_path / "cv", folds=2, seeds=1, val_fraction=0.25)
    assert calls == [{"resume": True}]
    assert again["pooled_per_seed"][0]["images"] == 36
    with pytest.raises(CVError, match="another folds"):
        run_cv(cfg, grouped_dataset, tmp_path / "cv", folds=3, seeds=1, val_fraction=0.25)
    shutil.rmtree(tmp_path / "cv")


def test_cv_command_help_and_bad_options(grouped_dataset, tmp_path, capsys):
    from asset.cli import main

    with pytest.raises(SystemExit):
        main(["cv", "--help"])
    assert "by object" in capsys.readouterr().out
    assert main(["cv", "--data", str(grouped_dataset), "--out", str(tmp_path / "x"), "--folds", "1"]) == 2
    assert "--folds must be at least 2" in capsys.readouterr().err
    assert main(["cv", "--data", str(grouped_dataset), "--out", str(tmp_path / "x"), "--only", "a"]) == 2
