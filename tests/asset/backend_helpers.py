"""Tiny model directories for the export / backend / benchmark tests, built without training (seconds).

A model directory is made the way `asset train` leaves one (weights.pt, model.json, SHA256SUMS) from the factory's
network with random weights; the image threshold is set between the median defect fractions of the validation
images so that both decisions occur. `shared()` builds the dataset and an exported MobileNetV2-Unet once per
session (cached), for tests that only read them.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from tests.asset.helpers import make_dataset

REPO = Path(__file__).resolve().parents[2]


def make_model_dir(out: Path, dataset: Path, arch: str = "unet", encoder: str = "mobilenet_v2", channels: int = 1,
                   seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    import torch

    from asset import modeldir
    from asset.algorithm import Algorithm, SizePolicy, default_normalisation
    from asset.export import data as D
    from asset.models.factory import build_model, required_divisor
    from datatools.validate import load_dataset

    torch.manual_seed(seed)
    net = build_model(arch, encoder, channels, "none").eval()
    divisor = required_divisor(net, arch)
    norm = default_normalisation(channels, pretrained=False)
    alg = Algorithm(channels, SizePolicy("pad", divisor, size), norm["mean"], norm["std"], 0.5, 0.0)
    version_dir, doc = load_dataset(Path(dataset))
    card = {"arch": arch, "encoder": encoder, "encoder_weights": "none", "classes": 1, "weights": "weights.pt",
            **alg.to_card(), "dataset": {"name": doc["name"], "version": doc["version"], "path": str(version_dir)},
            "exports": {}}
    items = D.split_items(card, "val")
    with torch.no_grad():
        fractions = sorted(
            alg.postprocess(net(torch.from_numpy(alg.preprocess([D.load_image(i.path)])[0])).numpy(),
                            alg.preprocess([D.load_image(i.path)])[1])[0].defect_fraction for i in items)
    mid = len(fractions) // 2
    card["thresholds"]["image"] = float(np.clip((fractions[mid - 1] + fractions[mid]) / 2, 0, 1))
    out = Path(out)
    out.mkdir(parents=True)
    torch.save(net.state_dict(), out / "weights.pt")
    modeldir.write_card(out, card)
    return out


@lru_cache(maxsize=1)
def shared() -> dict:
    """{"root", "dataset", "model"}: a tiny dataset and a MobileNetV2-Unet with onnx, onnx-int8 and openvino
    exports. Read-only for tests: copy it (copy_model) before changing it."""
    from asset.export import export_model

    root = Path(tempfile.mkdtemp(prefix="asset-backends-"))
    atexit.register(shutil.rmtree, root, True)
    dataset = make_dataset(root / "ds", n_train=16, n_test=8)
    model = make_model_dir(root / "unet", dataset)
    quiet = lambda m: None  # noqa: E731
    export_model(model, "onnx", log=quiet)
    export_model(model, "onnx-int8", max_accuracy_drop=1.0, calib_images=8, log=quiet)
    export_model(model, "openvino", log=quiet)
    return {"root": root, "dataset": dataset, "model": model}


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
