"""Tiny datasets and one trained tiny model, shared by the asset tests."""

from __future__ import annotations

import pytest

from tests.asset.helpers import make_dataset

# Small, fast and offline: random init, 32x32 images, no progress bar.
FAST = ["--encoder-weights", "none", "--no-progress", "--set", "data.batch_size=8", "--set", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, tiny_dataset):
    from asset.cli import main

    out = tmp_path_factory.mktemp("models") / "m"
    rc = main(["train", "--data", str(tiny_dataset), "--out", str(out), "--arch", "unet", "--encoder",
               "mobilenet_v2", "--epochs", "3", "--lr", "3e-3", "--loss", "bce_dice", *FAST])
    assert rc == 0
    return out
