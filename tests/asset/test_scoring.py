"""asset.scoring: batching by network shape and every metric, against figures computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from asset import scoring
from asset.algorithm import Algorithm, Prediction, SizePolicy
from asset.modeldir import ModelDirError


def pred(mask, score=None, defective=None) -> Prediction:
    m = np.asarray(mask, dtype=np.uint8)
    fraction = float(m.mean())
    return Prediction(mask=m, defect_fraction=fraction, score=fraction if score is None else score,
                      defective=fraction > 0 if defective is None else defective, threshold=0.0)


def test_hand_computed_metrics():
    # image 1: defective, predicted 2 pixels, 1 of them right, 2 ground-truth pixels -> inter 1, union 3
    # image 2: OK, nothing predicted, nothing true -> inter 0, union 0 (IoU 1 by definition)
    # image 3: OK, 1 pixel predicted (a false positive image) -> inter 0, union 1
    # image 4: defective, nothing predicted (a missed defect) -> inter 0, union 1
    preds = [pred([[1, 1], [0, 0]], 0.5), pred([[0, 0], [0, 0]], 0.0), pred([[0, 0], [0, 1]], 0.25),
             pred([[0, 0], [0, 0]], 0.1)]
    masks = [np.array([[1, 0], [1, 0]]), np.zeros((2, 2)), np.zeros((2, 2)), np.array([[0, 0], [1, 0]])]
    m = scoring.score(preds, [True, False, False, True], masks)
    assert m["images"] == 4 and m["defective_images"] == 2
    assert m["pixel_iou"] == pytest.approx(1 / 5)  # (1 + 0 + 0 + 0) / (3 + 0 + 1 + 1)
    assert m["mean_iou_defective"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5
    # scores ranked: 0.5 (pos), 0.25 (neg), 0.1 (pos), 0.0 (neg)
    # AP = 0.5 * 1/1 + 0.5 * 2/3 ; AUROC: pairs (pos > neg) = 3 of 4
    assert m["ap"] == pytest.approx(0.5 + 1 / 3)
    assert m["auroc"] == pytest.approx(0.75)
    # re-deciding at another threshold without the model: fraction >= 0.3 keeps only image 1
    scores = scoring.image_scores(preds, [True, False, False, True], masks)
    assert [s.iou for s in scores] == [pytest.approx(1 / 3), 1.0, 0.0, 0.0]
    again = scoring.metrics(scores, image_threshold=0.3)
    assert again["confusion_matrix"] == {"tn": 2, "fp": 0, "fn": 1, "tp": 1} and again["precision"] == 1.0


def test_one_class_and_empty():
    preds = [pred([[0, 1]]), pred([[0, 0]])]
    m = scoring.score(preds, [False, False], [np.zeros((1, 2)), np.zeros((1, 2))])
    assert m["ap"] is None and m["auroc"] is None and m["mean_iou_defective"] is None
    assert m["recall"] == 0.0 and m["precision"] == 0.0 and m["pixel_iou"] == 0.0
    with pytest.raises(ValueError, match="no images"):
        scoring.metrics([])
    with pytest.raises(ValueError, match="differ in size"):
        scoring.score([pred([[0, 1]])], [True], [np.zeros((2, 2))])


def test_ties_in_the_image_score():
    # a tie between a positive and a negative counts half in AUROC; AP takes the tied threshold as one step
    y = np.array([True, False, True, False])
    s = np.array([0.9, 0.5, 0.5, 0.1])
    assert scoring.auroc(s, y) == pytest.approx(0.875)  # pairs: (0.9>0.5, 0.9>0.1, 0.5=0.5 half, 0.5>0.1)
    assert scoring.average_precision(s, y) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ap_and_auroc_equal_torchmetrics():
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    rng = np.random.default_rng(0)
    for n in (5, 37, 200):
        y = rng.random(n) < 0.3
        y[0], y[1] = True, False
        s = np.round(rng.random(n), 2)  # rounded: ties included
        ty, ts = torch.tensor(y, dtype=torch.long), torch.tensor(s, dtype=torch.float64)
        # torchmetrics returns float32
        assert scoring.average_precision(s, y) == pytest.approx(float(binary_average_precision(ts, ty)), abs=1e-6)
        assert scoring.auroc(s, y) == pytest.approx(float(binary_auroc(ts, ty)), abs=1e-6)


def test_batches_by_network_shape_and_keeps_order():
    alg = Algorithm(1, SizePolicy("pad", 8, None), [0.5], [0.5])
    images = [np.full((8, 8), i, np.uint8) for i in range(3)] + [np.full((9, 8), 9, np.uint8), np.zeros((5, 7), np.uint8)]
    seen = []

    def infer(x):
        seen.append(x.shape)
        return x[:, :1]  # the image itself as logits

    batches = list(scoring.network_batches(alg, images, 2))
    assert [b[0] for b in batches] == [[0, 1], [2, 4], [3]]  # (5, 7) pads to 8 x 8 like the first three
    logits, metas = scoring.run_logits(infer, alg, images, 2)
    assert seen == [(2, 1, 8, 8), (2, 1, 8, 8), (1, 1, 16, 8)]
    assert [m.original for m in metas] == [(8, 8), (8, 8), (8, 8), (9, 8), (5, 7)]
    assert [float(lg[0, 0, 0]) for lg in logits] == pytest.approx([(i / 255 - 0.5) / 0.5 for i in (0, 1, 2, 9, 0)])
    preds = scoring.predict_all(infer, alg, images, 2)
    assert [p.mask.shape for p in preds] == [(8, 8), (8, 8), (8, 8), (9, 8), (5, 7)]
    with pytest.raises(ValueError, match="batch size"):
        list(scoring.network_batches(alg, images, 0))


def test_agreement():
    a = [pred([[1, 0], [0, 0]]), pred([[0, 0], [0, 0]])]
    b = [pred([[1, 1], [0, 0]]), pred([[0, 0], [0, 0]])]
    assert scoring.agreement(a, b) == {"decisions_equal": 2, "images": 2, "mask_agreement": 7 / 8}


def test_score_items_reads_a_split_batch_by_batch_like_predict_all(tmp_path):
    from datatools.validate import load_dataset
    from tests.asset.helpers import make_dataset

    data = make_dataset(tmp_path, n_train=2, n_test=7, sizes=[(32, 32), (40, 24), (30, 50)])
    items = scoring.dataset_items(*load_dataset(data), "test")
    alg = Algorithm(1, SizePolicy("pad", 8, None), [0.5], [0.5], image_threshold=0.01)

    def infer(x):  # bright pixels (the defects of make_dataset) as positive logits
        return (x[:, :1] - 0.6) * 10

    calls = []
    scores, preds = scoring.score_items(infer, alg, items, batch_size=2, keep_predictions=True,
                                        progress=calls.append)
    images = [scoring.load_image(i.path) for i in items]
    masks = [scoring.load_mask(i.rle) for i in items]
    expected = scoring.score(scoring.predict_all(infer, alg, images, 2), [i.defective for i in items], masks)
    assert scoring.metrics(scores) == expected and sum(calls) == len(items)
    assert expected["accuracy"] == 1.0 and expected["pixel_iou"] > 0.9  # the squares are found
    assert [p.mask.shape for p in preds] == [m.shape for m in masks]
    items[0].height += 1  # a dataset.json that lies about the image size
    with pytest.raises(ModelDirError, match="datatool validate"):
        scoring.score_items(infer, alg, items)


# ----------------------------------------------------------------------------- the training module's val metrics
def _val_loader(logits: list, masks: list, batch_size: int = 2):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.tensor(np.array(logits, dtype=np.float32))[:, None]
    y = torch.tensor(np.array(masks, dtype=np.float32))[:, None]
    return DataLoader(TensorDataset(x, y, torch.arange(len(x))), batch_size=batch_size)


def _validate(loader, devices: int = 1, strategy: str = "auto") -> dict:
    import lightning as L
    from torch import nn

    from asset.training.module import SegmentationModule

    module = SegmentationModule(nn.Identity(), nn.BCEWithLogitsLoss(), {"name": "adam", "lr": 1e-3},
                                {"name": "none"})
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    [out] = trainer.validate(module, dataloaders=loader, verbose=False)
    return out


# the net is the identity: the inputs are the logits. Four 2 x 2 images, two batches of two:
LOGITS = [[[5, 5], [-5, -5]],    # A: 2 pixels predicted
          [[-5, -5], [-5, -5]],  # B: nothing
          [[-5, -5], [-5, 5]],   # C: 1 pixel predicted
          [[-4, -4], [-4, -4]]]  # D: nothing, but closer than B
MASKS = [[[1, 0], [1, 0]],       # A defective: inter 1, union 3
         [[0, 0], [0, 0]],       # B OK: 0 / 0
         [[0, 0], [0, 0]],       # C OK: 0 / 1
         [[0, 0], [1, 0]]]       # D defective: 0 / 1


def test_training_val_metrics_equal_a_hand_computation():
    pytest.importorskip("lightning")
    out = _validate(_val_loader(LOGITS, MASKS))
    # pixel IoU over the dataset = 1 / (3 + 0 + 1 + 1)
    assert out["val/iou"] == pytest.approx(0.2)
    # image scores: A 0.5, C 0.25, D 1e-6 sigmoid(-4), B 1e-6 sigmoid(-5): ranked pos, neg, pos, neg
    assert out["val/ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-6)
    assert out["val/ap_iou"] == pytest.approx((0.5 + 1 / 3 + 0.2) / 2, abs=1e-6)
    # the same figures from asset.scoring on the same predictions
    sig = 1 / (1 + np.exp(-np.array([5.0, -5.0, 5.0, -4.0])))
    scores = np.array([0.5, 0.0, 0.25, 0.0]) + 1e-6 * sig
    assert out["val/ap"] == pytest.approx(scoring.average_precision(scores, [True, False, False, True]), abs=1e-6)
    # one class only: AP is NaN and ap_iou is the IoU; nothing predicted nor true: IoU 1
    ok = _validate(_val_loader(LOGITS[1:3], MASKS[1:3]))
    assert np.isnan(ok["val/ap"]) and ok["val/iou"] == pytest.approx(0.0) and ok["val/ap_iou"] == ok["val/iou"]
    empty = _validate(_val_loader(LOGITS[1:2], MASKS[1:2]))
    assert empty["val/iou"] == 1.0


def test_training_val_metrics_are_synced_across_processes():
    """Two CPU processes (DDP, gloo), each validating half the images: the logged figures are the whole set's
    (torchmetrics syncs the states), not one process's (rank 0 alone would give IoU 0.25 and AP 1)."""
    pytest.importorskip("lightning")
    out = _validate(_val_loader(LOGITS, MASKS), devices=2, strategy="ddp_spawn")
    assert out["val/iou"] == pytest.approx(0.2)
    assert out["val/ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-6)


def test_runtime_scoring_imports_neither_torch_nor_the_export_package():
    """Edge images have no torch, and runtime code must not reach into the build-time asset.export package."""
    import subprocess
    import sys

    code = ("import sys, asset.scoring, asset.benchmark, asset.evaluation, asset.commands.evaluate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchmetrics', 'lightning') "
            "or m.startswith('asset.export')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
