"""Training for rare defects: oversampling of defective images, the focal+Dice loss, the checkpoint monitor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asset.algorithm import Algorithm, SizePolicy
from asset.cli import main
from asset.training.data import DefectDataModule
from asset.training.module import build_loss
from tests.asset.conftest import FAST
from tests.asset.helpers import make_dataset


@pytest.fixture(scope="module")
def rare_dataset(tmp_path_factory):
    """40 train images, half defective: oversampling to 0.8 must show in the draws."""
    return make_dataset(tmp_path_factory.mktemp("rare"), n_train=60, n_test=4, size=32, name="rare")


def _module(data, oversample):
    algo = Algorithm(1, SizePolicy("pad", 32, None), [0.5], [0.5], 0.5, 0.0)
    return DefectDataModule(data, algo, batch_size=8, num_workers=0, seed=3, oversample=oversample)


def test_oversampling_draws_the_asked_share_of_defective_images(rare_dataset):
    dm = _module(rare_dataset, 0.8)
    flags = np.array([s.defective for s in dm.samples("train")])
    sampler = dm.train_sampler()
    draws = np.array([i for _ in range(50) for i in sampler])  # 50 epochs
    assert len(draws) == 50 * len(flags)
    share = flags[draws].mean()
    assert flags.mean() == pytest.approx(0.5, abs=0.1) and share == pytest.approx(0.8, abs=0.03)
    assert len(set(draws.tolist())) == len(flags)  # every image is still drawn
    # the loader draws through the sampler, and the same seed gives the same order
    loader_ids = [int(i) for _, _, idx, *_ in dm.train_dataloader() for i in idx]
    again = [int(i) for _, _, idx, *_ in _module(rare_dataset, 0.8).train_dataloader() for i in idx]
    assert loader_ids == again and len(loader_ids) == len(flags)
    assert _module(rare_dataset, None).train_sampler() is None


@pytest.mark.parametrize("name", ["focal_dice", "bce_dice", "jaccard"])
def test_losses_prefer_the_right_mask(name):
    loss = build_loss(name)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:7, 3:12] = 1  # a thin defect
    right = (target * 2 - 1) * 6
    assert loss(right, target) < loss(torch.zeros_like(right), target) < loss(-right, target)


def test_pos_weight_makes_missed_defect_pixels_cost_more():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:7, 3:12] = 1
    none = torch.full_like(target, -4.0)  # predicts no defect anywhere: what a collapsed epoch learns
    everything = torch.full_like(target, 4.0)
    plain, weighted = build_loss("bce"), build_loss("bce", pos_weight=10)
    # a missed defect pixel costs 10x more; a false alarm on an OK pixel costs the same
    defect = torch.ones_like(target)
    assert float(weighted(none, defect)) == pytest.approx(10 * float(plain(none, defect)), rel=1e-5)
    ok = torch.zeros_like(target)
    assert float(weighted(everything, ok)) == pytest.approx(float(plain(everything, ok)))
    combined = build_loss("bce_dice", pos_weight=10)
    assert combined(none, target) > build_loss("bce_dice")(none, target)


@pytest.mark.parametrize("key,value,message", [
    ("loss.pos_weight", "0", "loss.pos_weight"), ("loss.pos_weight", "many", "loss.pos_weight"),
    ("loss.pos_weight", "10", "applies to bce, bce_dice and bce_jaccard"),  # the default loss is jaccard
    ("data.oversample", "1.5", "data.oversample"), ("checkpoint.monitor", "val/loss", "checkpoint.monitor"),
    ("thresholds.image_calibration", "test", "thresholds.image_calibration"),
    ("thresholds.min_calibration_defects", "-1", "min_calibration_defects"),
    ("thresholds.image_margin", "middle", "thresholds.image_margin"),
    ("model.head_prior", "0", "model.head_prior"), ("model.head_prior", "1.5", "model.head_prior"),
    ("model.head_prior", "true", "model.head_prior"),
    ("optimizer.ema_decay", "1", "optimizer.ema_decay"), ("optimizer.ema_decay", "0", "optimizer.ema_decay"),
    ("optimizer.ema_decay", "fast", "optimizer.ema_decay"),
])
def test_bad_keys_are_refused_before_training(rare_dataset, tmp_path, capsys, key, value, message):
    out = tmp_path / "m"
    assert main(["train", "--data", str(rare_dataset), "--out", str(out), *FAST, "--set", f"{key}={value}"]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_train_with_oversampling_and_ap_monitor(rare_dataset, tmp_path):
    from asset import modeldir

    out = tmp_path / "m"
    assert main(["train", "--data", str(rare_dataset), "--out", str(out), "--epochs", "2", "--loss", "focal_dice",
                 *FAST, "--set", "data.oversample=0.7", "--set", "checkpoint.monitor=val/ap",
                 "--set", "thresholds.image_calibration=val"]) == 0
    card = modeldir.verify(out)
    t = card["training"]
    assert t["oversample"] == 0.7 and t["loss"] == "focal_dice" and t["monitor"] == "val/ap"
    aps = [r["ap"] for r in t["val_history"]]
    assert len(aps) == 2 and t["best_score"] == pytest.approx(max(aps), abs=1e-5)
    assert aps[t["best_epoch"]] == pytest.approx(max(aps), abs=1e-5)
    cal = card["thresholds"]["image_calibration"]
    assert cal["split"] == "val" and cal["images"] == card["dataset"]["splits"]["val"]["images"]


def test_head_prior_starts_the_network_at_that_defect_probability(rare_dataset, tmp_path):
    """model.head_prior reaches the network train() builds (the last bias is logit(prior)); null keeps SMP's init."""
    from asset.config import load_config
    from asset.training.train import prepare

    def head_bias(prior):
        cfg = load_config(None, [f"data.path={rare_dataset}", "model.encoder_weights=none",
                                 f"model.head_prior={prior}"])
        net = prepare(cfg, tmp_path / "unused")["net"]
        return float(net.segmentation_head[0].bias.detach())

    assert head_bias(0.01) == pytest.approx(np.log(0.01 / 0.99))
    assert abs(head_bias("null")) < 1.0  # a random init near 0, not the prior


def test_ema_weights_are_validated_kept_exported_and_resumed(rare_dataset, tmp_path):
    """optimizer.ema_decay: validation runs on the averaged weights, best.ckpt and weights.pt hold them, and the raw
    weights travel beside them so --resume continues both."""
    from asset import modeldir

    out = tmp_path / "m"
    assert main(["train", "--data", str(rare_dataset), "--out", str(out), "--epochs", "2", *FAST,
                 "--set", "optimizer.ema_decay=0.5", "--set", "checkpoint.monitor=val/iou"]) == 0
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, raw = last["state_dict"], last["current_model_state"]
    assert int(last["averaging_state"]["n_averaged"]) == last["global_step"] > 1  # updated after every step
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if averaged[k].is_floating_point())

    card = modeldir.verify(out)
    assert card["training"]["optimizer"]["ema_decay"] == 0.5
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    exported = torch.load(out / "weights.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(v, best[f"net.{k}"]) for k, v in exported.items())
    # the val IoU of the kept epoch is that of the exported (averaged) weights, measured again after training
    kept = card["training"]["val_history"][card["training"]["best_epoch"]]
    assert card["metrics"]["val"]["pixel_iou"] == pytest.approx(kept["iou"], abs=1e-4)

    assert main(["train", "--resume", str(out), "--no-progress", "--epochs", "3"]) == 0
    resumed = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(resumed["averaging_state"]["n_averaged"]) == resumed["global_step"] > last["global_step"]
