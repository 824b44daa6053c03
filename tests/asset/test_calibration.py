"""The image threshold calibrated on train+val: how many images set it, and a warning when too few are defective."""

from __future__ import annotations

import pytest

from asset import modeldir
from asset.scoring import ImageScore
from asset.training.train import calibrate


def rec(i: int, fraction: float, defective: bool) -> ImageScore:
    return ImageScore(defective, fraction, fraction, False, 0, 0, 0, id=f"r{i}")


def test_calibration_uses_every_split_and_counts_them():
    val = [rec(0, 0.0, False), rec(1, 0.02, True), rec(2, 0.001, False)]
    train = [rec(3, 0.004, False), rec(4, 0.006, True), *[rec(5 + i, 0.03, True) for i in range(30)]]
    cal = calibrate({"train": train, "val": val}, min_defects=20)
    assert cal["split"] == "train+val" and cal["images"] == 35 and cal["defective_images"] == 32
    assert cal["ok_images"] == 3 and cal["per_split"]["val"] == {"images": 3, "defective_images": 1}
    assert cal["warning"] is None and cal["accuracy"] == 1.0
    # val alone would put the threshold between 0.001 and 0.02; the train images narrow it to (0.004, 0.006)
    assert 0.004 < cal["value"] < 0.006
    val_only = calibrate({"val": val}, min_defects=20)
    assert 0.001 < val_only["value"] < 0.02 and not 0.004 < val_only["value"] < 0.006


def test_geometric_margin_is_recorded_and_uses_one_pixel_of_the_largest_image():
    val = [rec(0, 0.0, False), rec(1, 0.0, False), rec(2, 0.004, True)]
    cal = calibrate({"val": val}, min_defects=1, margin="geometric", pixels=500 * 1250)
    assert cal["margin"] == "geometric" and cal["value"] == pytest.approx((0.004 / (500 * 1250)) ** 0.5)
    lin = calibrate({"val": val}, min_defects=1)
    assert lin["margin"] == "linear" and lin["value"] == pytest.approx(0.002)


@pytest.mark.parametrize("defects,warned", [(4, True), (19, True), (20, False)])
def test_warning_when_too_few_defective_images(defects, warned):
    records = [rec(i, 0.01, True) for i in range(defects)] + [rec(100 + i, 0.0, False) for i in range(50)]
    cal = calibrate({"val": records}, min_defects=20)
    assert (cal["warning"] is not None) == warned
    if warned:
        assert f"only {defects} defective" in cal["warning"]


def test_card_records_calibration_and_history(trained_model):
    """The shared tiny model (default config): calibrated on train+val, counts match the dataset, warned."""
    card = modeldir.verify(trained_model)
    cal = card["thresholds"]["image_calibration"]
    splits = card["dataset"]["splits"]
    assert cal["split"] == "train+val" and cal["value"] == card["thresholds"]["image"]
    assert cal["images"] == splits["train"]["images"] + splits["val"]["images"]
    assert cal["defective_images"] == splits["train"]["defective"] + splits["val"]["defective"]
    assert cal["warning"] and "defective image" in cal["warning"]  # 12 defective < 20
    assert "warning: image threshold calibrated on only" in (trained_model / "logs" / "train.log").read_text()
    t = card["training"]
    assert t["monitor"] == "val/ap_iou" and len(t["val_history"]) == 3
    assert [row["epoch"] for row in t["val_history"]] == [0, 1, 2]
    kept = t["val_history"][t["best_epoch"]]
    assert t["best_val_iou"] == kept["iou"]
    ap_iou = [(r["ap"] + r["iou"]) / 2 if r["ap"] is not None else r["iou"] for r in t["val_history"]]
    assert t["best_score"] == pytest.approx(max(ap_iou), abs=1e-5)
