"""Image-level labels that train (issue 26): a defective image without a mask teaches the decision head through its
image label and never the pixel loss; pixel figures leave it out; data.mask_fraction keeps a seeded share of the
masks; training says how many of each it saw, and refuses unmasked images without a decision head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from asset.scoring import Item
from asset.training.data import keep_masks, mask_counts
from asset.training.module import SegmentationModule, build_loss
from tests.asset.conftest import FAST

H = W = 8
# the module's self.log() outside a Trainer only warns: these tests call the steps directly
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


class Fixed(nn.Module):
    """A 'network' whose output is a parameter (N x 2 x H x W): its gradient shows what each loss reaches."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.out = nn.Parameter(torch.linspace(-2, 2, n * 2 * H * W).reshape(n, 2, H, W))

    def forward(self, x):
        return self.out * 1.0


def _module(net, loss="bce_dice"):
    return SegmentationModule(net, build_loss(loss), {"name": "adam", "lr": 1e-3}, {"name": "none"},
                              decision_weight=1.0)


def _batch():
    """Three images: OK (empty mask), defective with a mask, defective without one (image-level label)."""
    y = torch.zeros(3, 1, H, W)
    y[1, 0, 2:5, 2:5] = 1
    label = torch.tensor([0.0, 1.0, 1.0])
    masked = torch.tensor([True, True, False])
    return torch.zeros(3, 1, H, W), y, torch.arange(3), label, masked


@pytest.mark.parametrize("loss", ["jaccard", "bce_dice"])
def test_an_unmasked_image_reaches_the_decision_loss_not_the_pixel_loss(loss):
    net = Fixed(3)
    module = _module(net, loss)
    batch = _batch()
    total = module.training_step(batch, 0)
    total.backward()
    grad = net.out.grad
    assert grad[2, 0].abs().sum() == 0  # its pixels: no gradient at all
    assert grad[2, 1].abs().sum() > 0  # its image logit: trained by its label
    assert grad[1, 0].abs().sum() > 0 and grad[0, 0].abs().sum() > 0  # masked images: pixel loss as before

    # the value: the pixel loss of the masked images plus the image BCE of all three
    out = net.out.detach()
    pixel = build_loss(loss)(out[:2, :1], batch[1][:2])
    image = nn.functional.binary_cross_entropy_with_logits(out[:, 1].flatten(1).amax(1), batch[3])
    assert float(total.detach()) == pytest.approx(float(pixel + image), rel=1e-5)

    # the same image flagged as masked: its all-zero mask would pull its pixels towards "no defect"
    net.out.grad = None
    x, y, i, label, _ = batch
    module.training_step((x, y, i, label, torch.ones(3, dtype=torch.bool)), 0).backward()
    assert net.out.grad[2, 0].abs().sum() > 0


def test_a_batch_without_any_mask_trains_the_head_only():
    net = Fixed(2)
    module = _module(net)
    x, y = torch.zeros(2, 1, H, W), torch.zeros(2, 1, H, W)
    total = module.training_step((x, y, torch.arange(2), torch.tensor([1.0, 1.0]), torch.tensor([False, False])), 0)
    total.backward()
    assert net.out.grad[:, 0].abs().sum() == 0 and net.out.grad[:, 1].abs().sum() > 0


def test_old_style_batches_derive_labels_from_masks():
    net = Fixed(3)
    module = _module(net)
    x, y, i, label, masked = _batch()
    a = module.training_step((x, y, i), 0)
    b = module.training_step((x, y, i, (y.flatten(1).amax(1) > 0.5).float(), torch.ones(3, dtype=torch.bool)), 0)
    assert float(a) == pytest.approx(float(b))


def test_validation_pixel_iou_only_over_masked_images():
    net = Fixed(3)
    with torch.no_grad():
        net.out[:, 0] = -10
        net.out[1, 0, 2:5, 2:5] = 10  # the masked defect found exactly
        net.out[2, 0, 0:4, 0:4] = 10  # the unmasked defective image: predicted pixels, no truth to compare with
    module = _module(net)
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step(_batch(), 0)
    assert float(module.val_iou.compute()) == pytest.approx(1.0)  # not 9 / (9 + 16)
    assert int(module.val_defective.compute()) == 2 and int(module.val_images.compute()) == 3


def _samples(n_def: int, n_ok: int, unmasked: int = 0) -> list[Item]:
    out = [Item(f"d{i}", Path("x"), True, {}, 4, 4, masked=i >= unmasked) for i in range(n_def)]
    return out + [Item(f"k{i}", Path("x"), False, {}, 4, 4) for i in range(n_ok)]


def test_keep_masks_is_seeded_and_counts():
    samples = _samples(8, 5, unmasked=2)  # 6 masks to choose from
    kept = keep_masks(samples, 0.5, seed=0, split="train")
    assert mask_counts(kept) == {"images": 13, "ok": 5, "defective_masked": 3, "defective_image_level": 5}
    assert [s.masked for s in kept] == [s.masked for s in keep_masks(samples, 0.5, seed=0, split="train")]
    assert all(s.masked for s in kept if not s.defective)  # OK images stay fully labelled
    assert keep_masks(samples, 1.0, 0, "train") == samples
    assert mask_counts(keep_masks(samples, 0.0, 0, "train"))["defective_masked"] == 0


def test_scoring_leaves_unmasked_images_out_of_pixel_figures():
    from asset import scoring
    from asset.algorithm import Prediction

    def pred(mask):
        return Prediction(mask=mask, defect_fraction=float(mask.mean()), score=float(mask.mean()),
                          defective=bool(mask.any()), threshold=0.01)

    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1
    found = scoring.image_score(pred(gt.copy()), True, gt)
    blind = scoring.image_score(pred(np.ones((4, 4), np.uint8)), True, np.zeros((4, 4), np.uint8), masked=False)
    assert (blind.inter, blind.union, blind.masked) == (0, 0, False)
    m = scoring.metrics([found, blind])
    assert m["pixel_iou"] == 1.0 and m["mean_iou_defective"] == 1.0
    assert m["defective_images"] == 2 and m["recall"] == 1.0  # both count in the image figures


def test_fraction_rule_refuses_unmasked_training_images(tiny_dataset, tmp_path):
    from asset.cli import main
    from asset.config import ConfigError, load_config
    from asset.training.train import prepare

    cfg = load_config(overrides=["data.mask_fraction=0.25", "model.encoder_weights=none"])
    cfg["data"]["path"] = str(tiny_dataset)
    with pytest.raises(ConfigError, match=r"mask_fraction 0.25 leaves \d+ defective .*model.decision=head"):
        prepare(cfg, tmp_path / "m")
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "m"), "--set",
                 "data.mask_fraction=0.25", *FAST]) == 2
    assert not (tmp_path / "m" / "model.json").exists()
    with pytest.raises(ConfigError, match="data.mask_fraction"):
        load_config(overrides=["data.mask_fraction=1.5"])


def test_train_on_a_folder_dataset_with_image_level_labels(tmp_path, capsys):
    """End to end: `datatool convert folder` with some masks missing, `asset train` with a head and
    mask_fraction 0.5: the card and the log say what was used; evaluation scores pixels on masked images only."""
    from asset.cli import main
    from datatools.cli import main as datatool
    from tests.datatools.test_folder import make_parts

    raw = make_parts(tmp_path / "raw", parts=16, masked=12)
    assert datatool(["convert", "folder", "--raw", str(raw), "--out", str(tmp_path / "data"), "--masks", "masks",
                     "--mask-suffix", "_mask", "--workers", "1"]) == 0
    data = Path(capsys.readouterr().out.strip().splitlines()[-1])
    doc = json.loads((data / "dataset.json").read_text())
    out = tmp_path / "m"
    rc = main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--set", "model.decision=head",
               "--set", "data.mask_fraction=0.5", "--set", "data.size_mode=resize", "--set", "data.size=[32,32]",
               *FAST])
    assert rc == 0
    card = json.loads((out / "model.json").read_text())
    masks = card["training"]["masks"]
    assert masks["mask_fraction"] == 0.5
    for split in ("train", "val"):
        samples = [s for s in doc["samples"] if s["split"] == split]
        masked_before = sum(s["defective"] and s.get("mask_labelled", True) for s in samples)
        c = masks[split]
        assert c["images"] == len(samples) and c["ok"] == sum(not s["defective"] for s in samples)
        assert c["defective_masked"] == round(0.5 * masked_before)
        assert c["defective_masked"] + c["defective_image_level"] == sum(s["defective"] for s in samples)
    log = (out / "logs" / "train.log").read_text()
    assert "masks (data.mask_fraction 0.5, seed 0): train" in log and "defective image-level only" in log

    assert main(["evaluate", "--model", str(out), "--data", str(data), "--split", "test",
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    preds = {r["id"]: r for r in json.loads((tmp_path / "ev" / "predictions.json").read_text())}
    unmasked = [s["id"] for s in doc["samples"] if s["split"] == "test" and s.get("mask_labelled") is False]
    for sid in unmasked:
        assert preds[sid]["masked"] is False and preds[sid]["union"] == 0
    assert metrics["images"] == sum(s["split"] == "test" for s in doc["samples"])
