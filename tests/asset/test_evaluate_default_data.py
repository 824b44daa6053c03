"""`asset evaluate` without --data: the dataset recorded in the model card, when it is still there."""

from __future__ import annotations

import json
import shutil

from asset.cli import main


def test_evaluate_uses_the_dataset_of_the_model_card(trained_model, tiny_dataset, tmp_path):
    card = json.loads((trained_model / "model.json").read_text())
    assert card["dataset"]["path"]  # what train records and evaluate falls back to
    assert main(["evaluate", "--model", str(trained_model), "--split", "test", "--out", str(tmp_path / "a")]) == 0
    assert main(["evaluate", "--model", str(trained_model), "--data", str(tiny_dataset), "--split", "test",
                 "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["dataset"] == b["dataset"] == {"name": card["dataset"]["name"], "version": card["dataset"]["version"]}
    assert a["accuracy"] == b["accuracy"] and a["pixel_iou"] == b["pixel_iou"]


def test_evaluate_without_data_says_what_to_do_when_the_recorded_dataset_is_gone(trained_model, tmp_path, capsys):
    moved = tmp_path / "m"
    shutil.copytree(trained_model, moved)
    card = json.loads((moved / "model.json").read_text())
    card["dataset"]["path"] = str(tmp_path / "gone" / "tiny" / "0123456789ab")
    from asset import modeldir

    modeldir.write_card(moved, card)  # keep the checksums valid: only the recorded path changed
    assert main(["evaluate", "--model", str(moved), "--split", "test", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "gone" in err and "--data" in err
