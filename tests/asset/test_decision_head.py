"""The learned image decision (model.decision: head): the rule in Algorithm and the tiler, training, the card,
export parity of both outputs, the server's answer, and the cosine schedule sized to a time cap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asset.algorithm import Algorithm, AlgorithmError, Meta, SizePolicy, sigmoid
from tests.asset.conftest import FAST


def _algorithm(decision: str, threshold: float = 0.5) -> Algorithm:
    return Algorithm(1, SizePolicy("pad", 8, None), [0.5], [0.5], 0.5, threshold, decision=decision)


def _two_channel(pixel: np.ndarray, image_logit: float) -> np.ndarray:
    return np.stack([pixel, np.full_like(pixel, image_logit)])[None].astype(np.float32)


def test_head_rule_decides_on_the_image_logit_and_fraction_rule_on_channel_0():
    pixel = np.full((16, 16), -5.0, np.float32)
    pixel[:2, :2] = 5.0  # 4 of 256 pixels: fraction 1/64
    out = _two_channel(pixel, 1.0)
    meta = [Meta(original=(16, 16), content=(16, 16))]
    head = _algorithm("head", 0.6).postprocess(out, meta)[0]
    assert head.score == pytest.approx(float(sigmoid(np.float32(1.0))))  # 0.731
    assert head.value == head.score and head.defective
    assert head.defect_fraction == pytest.approx(1 / 64) and head.mask.sum() == 4
    assert not _algorithm("head", 0.8).postprocess(out, meta)[0].defective
    frac = _algorithm("fraction", 0.01).postprocess(out, meta)[0]  # the same output, decided by the fraction
    assert frac.value == pytest.approx(1 / 64) and frac.defective
    assert np.array_equal(frac.mask, head.mask)


def test_head_rule_needs_the_image_channel_and_reads_only_the_content():
    meta = [Meta(original=(12, 10), content=(12, 10))]
    with pytest.raises(AlgorithmError, match="no image logit channel"):
        _algorithm("head").postprocess(np.zeros((1, 1, 16, 16), np.float32), meta)
    out = _two_channel(np.zeros((16, 16), np.float32), -3.0)
    out[0, 1, 12:, :] = 9.0  # padding rows: not the image's
    assert _algorithm("head").postprocess(out, meta)[0].score == pytest.approx(float(sigmoid(np.float32(-3.0))))
    with pytest.raises(AlgorithmError, match="decision rule"):
        _algorithm("vote")


def test_card_round_trip_and_old_cards_decide_by_fraction():
    alg = _algorithm("head", 0.3)
    card = alg.to_card()
    assert card["decision"] == {"rule": "head"}
    assert Algorithm.from_card(card).decision == "head"
    del card["decision"]  # a card written before decision heads
    assert Algorithm.from_card(card).decision == "fraction"


def test_tiler_takes_the_largest_image_logit_over_tiles():
    from asset.tiling import Tiler

    alg = Algorithm(1, SizePolicy("pad", 8, None), [0.5], [0.5], 0.5, 0.5, decision="head")
    tiler = Tiler(alg, (16, 16), max_factor=3.0)  # 3 tiles of 16 x 16, no shrinking
    image = np.zeros((16, 64), np.uint8)  # 4 tiles' worth: shrunk to 16 x 48, 3 tiles
    image[:, 48:] = 255  # only the last tile is mostly bright

    def infer(x):  # image logit = 4 on a bright tile, -4 elsewhere
        logit = np.where(x.reshape(len(x), -1).mean(1) > 0, 4.0, -4.0).astype(np.float32)
        return np.stack([np.full(x.shape[2:], -9.0, np.float32)[None].repeat(len(x), 0),
                         np.ones(x.shape[2:], np.float32)[None] * logit[:, None, None]], 1)

    assert tiler.needs_tiles(16, 64) and len(tiler.plan(16, 64).xs) == 3
    pred = tiler.predict(image, infer, batch_size=2)
    assert pred.defective and pred.score == pytest.approx(float(sigmoid(np.float32(4.0))))
    assert pred.defect_fraction == 0.0


def test_decision_net_outputs_both_and_detaches_the_head_loss():
    from asset.models.decision import build_decision_net
    from asset.models.factory import build_model

    net = build_decision_net(build_model("unet", "mobilenet_v2", 1, "none"), channels=8, detach=True)
    out = net(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 2, 64, 64)
    assert torch.equal(out[:, 1], out[:, 1, :1, :1].expand(2, 64, 64))  # one image logit per image, broadcast
    out[:, 1].sum().backward()
    # the head's loss stops at the segmentation (channel 0 of the concatenation sends zeros)
    assert all(p.grad is None or not p.grad.any() for p in net.seg.parameters())
    assert all(p.grad is not None and p.grad.any() for p in net.classifier.parameters())


@pytest.fixture(scope="module")
def head_model(tiny_dataset, tmp_path_factory):
    from asset.cli import main

    out = tmp_path_factory.mktemp("head") / "m"
    rc = main(["train", "--data", str(tiny_dataset), "--out", str(out), "--arch", "unet", "--encoder",
               "mobilenet_v2", "--epochs", "3", "--lr", "3e-3", "--loss", "bce_dice", "--set", "model.decision=head",
               "--set", "model.decision_channels=8", "--set", "loss.decision_ramp_epochs=2", *FAST])
    assert rc == 0
    return out


def test_training_a_head_model_writes_its_rule_and_the_card_threshold_is_on_the_head_score(head_model,
                                                                                          tiny_dataset):
    from asset import modeldir
    from asset.evaluation import compute_metrics, evaluate_samples, torch_runner
    from asset.models.decision import DecisionNet
    from asset.models.factory import load_network
    from asset.scoring import dataset_items
    from asset.training.data import open_dataset
    card = modeldir.verify(head_model)
    assert card["decision"]["rule"] == "head" and card["decision"]["channels"] == 8
    assert card["decision"]["ramp_epochs"] == 2
    net, card = load_network(head_model)
    assert isinstance(net, DecisionNet)
    alg = Algorithm.from_card(card)
    version_dir, doc = open_dataset(tiny_dataset)
    val = dataset_items(version_dir, doc, "val")
    records = evaluate_samples(torch_runner(net), alg, val)
    assert all(0 <= r.value <= 1 and r.value == r.score for r in records)  # the head's probability
    assert compute_metrics(records, alg.image_threshold)["accuracy"] == pytest.approx(
        card["metrics"]["val"]["accuracy"])
    # the decision loss was logged, the checkpoint's val AP ranks by the head
    header = (head_model / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/decision_loss_epoch" in header


def test_export_carries_both_outputs_and_every_backend_decides_alike(head_model, tmp_path):
    import shutil

    from asset.backends import load_backend
    from asset.export import export_model
    from asset.predictor import Predictor
    from tests.asset.serve_helpers import split_images

    model = shutil.copytree(head_model, tmp_path / "m")
    export_model(model, "onnx", log=lambda m: None)
    export_model(model, "openvino", log=lambda m: None)
    card = json.loads((model / "model.json").read_text())
    data = [d for _, _, d in split_images(card["dataset"]["path"], "test")]
    x, _ = Algorithm.from_card(card).preprocess([Algorithm.decode(d) for d in data[:4]])
    with load_backend("pytorch", model) as torch_backend, load_backend("onnxruntime", model) as ort:
        ref, got = torch_backend.infer(x), ort.infer(x)
    assert got.shape == ref.shape == (4, 2, *x.shape[2:])
    assert np.max(np.abs(got - ref)) < 1e-3
    results = {}
    for backend in ("pytorch", "onnxruntime", "openvino"):
        with Predictor(model, backend=backend) as p:
            results[backend] = p.predict_bytes(data)
    for backend, preds in results.items():
        for a, b in zip(preds, results["pytorch"]):
            assert a.defective == b.defective, backend
            assert a.score == pytest.approx(b.score, abs=1e-4), backend


def test_server_answers_with_the_head_score(head_model, tmp_path):
    import shutil
    import time

    from fastapi.testclient import TestClient

    from asset.export import export_model
    from asset.predictor import Predictor
    from asset.serve import Settings, create_app
    from tests.asset.serve_helpers import split_images

    model = shutil.copytree(head_model, tmp_path / "m")
    export_model(model, "onnx", log=lambda m: None)
    card = json.loads((model / "model.json").read_text())
    images = split_images(card["dataset"]["path"], "test")
    with Predictor(model, backend="onnxruntime", threads=1) as p, \
            TestClient(create_app(Settings(model=str(model), threads=1, max_wait_ms=2))) as client:
        deadline = time.time() + 60
        while client.get("/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        for _, _, data in images:
            expected = p.predict_bytes([data])[0]
            body = client.post("/predict", content=data, headers={"content-type": "image/png"}).json()
            assert body["score"] == pytest.approx(expected.score, abs=1e-6)
            assert body["defective"] == expected.defective == (expected.score >= body["threshold"])
        # an override threshold applies to the head score too
        body = client.post("/predict?threshold=1.0", content=images[0][2], headers={"content-type": "image/png"})
        assert body.json()["defective"] is False


def test_decision_keys_are_validated():
    from asset.config import ConfigError, load_config

    for bad in ("model.decision=vote", "model.decision_channels=0", "model.decision_detach=maybe",
                "loss.decision_weight=0", "loss.decision_ramp_epochs=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_cosine_schedule_is_sized_to_the_time_cap():
    from lightning.pytorch.callbacks import Timer

    from asset.training.module import build_scheduler, time_budget_schedule

    class Trainer:  # what the callback reads of Lightning's trainer
        global_step = 100
        estimated_stepping_batches = 1000

    timer = Timer(duration="00:00:10:00")  # 600 s cap
    timer._offset = 150.0  # not started: elapsed = the 150 s of 100 steps so far; 300 more fit in the 450 s left
    Trainer.callbacks = [timer]

    class Module:
        schedule_steps = 1000

    module = Module()
    time_budget_schedule().on_train_epoch_end(Trainer(), module)
    assert module.schedule_steps == 400
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, {"name": "cosine", "warmup_steps": 0}, lambda: module.schedule_steps, 1.0)
    factor = sched["scheduler"].lr_lambdas[0]
    assert factor(200) == pytest.approx(0.5) and factor(400) == pytest.approx(0.0)
    Trainer.callbacks = []  # no time cap: the schedule keeps max_epochs' length
    module.schedule_steps = 1000
    time_budget_schedule().on_train_epoch_end(Trainer(), module)
    assert module.schedule_steps == 1000
