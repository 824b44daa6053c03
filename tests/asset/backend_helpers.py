"""Tiny model directories for the export / backend / benchmark tests, built without training (seconds).

A model directory is made the way `asset train` leaves one (weights.pt, model.json, SHA256SUMS) from the factory's
network, with random weights or fitted for a few full-batch steps of a plain loop (`train_steps`: a real detector
in seconds, far cheaper than `asset train`); the image threshold is set between the median defect fractions of the
validation images so that both decisions occur. `shared()` builds the dataset and an exported, fitted
MobileNetV2-Unet once per session (cached), for tests that only read them.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from tests.asset.helpers import make_dataset


def fit(net, alg, items, steps: int) -> None:
    """Full-batch Adam on BCE + Dice over `items` (same-size images). Images up to 64x64 run on one thread: there
    thread hand-offs cost more than they save, and one thread keeps the tests' model reproducible."""
    import torch

    from asset.export import data as D

    x = np.concatenate([alg.preprocess([D.load_image(i.path)])[0] for i in items])
    y = np.stack([D.load_mask(i.rle) for i in items])[:, None].astype(np.float32)
    if x.shape[2:] != y.shape[2:]:
        raise ValueError(f"fit needs images at the network size, got {x.shape[2:]} for masks {y.shape[2:]}")
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if x.shape[2] * x.shape[3] <= 64 * 64 else threads)
    try:
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        net.train()
        for _ in range(steps):
            opt.zero_grad()
            logits = net(x)
            p = torch.sigmoid(logits)
            dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
            (torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + dice).backward()
            opt.step()
    finally:
        net.eval()
        torch.set_num_threads(threads)


def make_model_dir(out: Path, dataset: Path, arch: str = "unet", encoder: str = "mobilenet_v2", channels: int = 1,
                   seed: int = 0, size: tuple[int, int] | None = None, train_steps: int = 0,
                   train_dataset: Path | None = None) -> Path:
    """`train_steps` > 0 fits the network on the train split of `train_dataset` (default: `dataset`, the one the
    card records and exports verify on)."""
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
    if train_steps:
        fit(net, alg, D.split_items(card, "train", data=train_dataset), train_steps)
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


# Enough for accuracy 1.0 and pixel IoU ~0.7 on the validation images of make_dataset(n_train=16, n_test=8).
SHARED_TRAIN_STEPS = 60


def add_activation_outlier(model_dir: Path, scale: float = 1000.0, channel: int = 0) -> None:
    """Make one channel of a Unet's last decoder activation `scale` times larger and divide the segmentation head's
    weights for it by `scale`: the same function in fp32 (ReLU is positively homogeneous), but per-tensor INT8
    activations now spend their whole range on that channel and round the other channels to nothing - the
    activation-outlier failure of post-training quantisation. Rewrites weights.pt and the checksums."""
    import torch

    from asset import modeldir

    card = modeldir.verify(model_dir)
    state = torch.load(model_dir / card["weights"], map_location="cpu", weights_only=True)
    block = max(int(k.split(".")[2]) for k in state if k.startswith("decoder.blocks."))
    bn = f"decoder.blocks.{block}.conv2.1"
    state[f"{bn}.weight"][channel] *= scale
    state[f"{bn}.bias"][channel] *= scale
    state["segmentation_head.0.weight"][:, channel] /= scale
    torch.save(state, model_dir / card["weights"])
    modeldir.write_card(model_dir, card)


@lru_cache(maxsize=1)
def shared() -> dict:
    """{"root", "dataset", "model"}: a tiny dataset and a fitted MobileNetV2-Unet with onnx, onnx-int8 (default
    accuracy gate) and openvino exports. Read-only for tests: copy it (copy_model) before changing it."""
    from asset.export import export_model

    root = Path(tempfile.mkdtemp(prefix="asset-backends-"))
    atexit.register(shutil.rmtree, root, True)
    dataset = make_dataset(root / "ds", n_train=16, n_test=8)
    model = make_model_dir(root / "unet", dataset, train_steps=SHARED_TRAIN_STEPS)
    quiet = lambda m: None  # noqa: E731
    export_model(model, "onnx", log=quiet)
    export_model(model, "onnx-int8", calib_images=8, log=quiet)  # the users' accuracy gate
    export_model(model, "openvino", log=quiet)
    return {"root": root, "dataset": dataset, "model": model}


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def outlier_model(dst: Path) -> Path:
    """A copy of the shared fitted model with an activation outlier (add_activation_outlier) and a verified fp32
    ONNX export (same function as before), no other export: INT8 really changes its decisions."""
    from asset import modeldir
    from asset.export import export_model

    m = copy_model(shared()["model"], dst)
    card = modeldir.verify(m)
    card["exports"] = {}
    shutil.rmtree(m / "exports")
    modeldir.write_card(m, card)
    add_activation_outlier(m)
    export_model(m, "onnx", log=lambda msg: None)
    return m
