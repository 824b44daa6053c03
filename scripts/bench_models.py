"""The benchmarks' datasets and models, made through the project's own commands (nothing from tests/).

    dataset = make_dataset(root / "ds", 512)                  # datatools' writer: a real dataset version
    model = train_model(root / "m", dataset, "linknet", epochs=30)  # `asset train` as users run it

`make_dataset` writes a small dataset with `datatools.convert.write_dataset` (3-channel noise with bright square
defects, or DAGM-like grayscale textures from the synthetic generator); `train_model` runs `asset train` (the CLI,
in a subprocess: its own Lightning, threads and logging), so that the model directory, its card
(input.train_size, the calibrated image threshold, ...) and its checksums are exactly what users get. A failed
training prints the command's own output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, size: int, channels: int = 3, defect: int = 32, n_train: int = 12, n_test: int = 4,
                 val_fraction: float = 0.34) -> Path:
    """A dataset version at size x size: half the images defective. 3 channels: noise 60..119 with one bright
    (230) `defect` x `defect` square; 1 channel: DAGM-like textures of the synthetic datatool. Returns the version
    directory."""
    from PIL import Image

    from datatools.convert import write_dataset
    from datatools.records import ParsedDataset, RawSample
    from datatools.synthetic.generator import SyntheticOptions, render

    rng = np.random.default_rng(0)
    raw = Path(root) / "raw"
    raw.mkdir(parents=True)
    samples = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            if channels == 1:
                img, mask = render(SyntheticOptions(size=size), 1 + i % 4, split, i, defective=i % 2 == 0)
                mask = (mask > 0).astype(np.uint8)
            else:
                img = rng.integers(60, 120, size=(size, size, 3)).astype(np.uint8)
                mask = np.zeros((size, size), np.uint8)
                if i % 2 == 0:
                    d = max(1, min(defect, size // 2))
                    y, x = rng.integers(0, size - d, 2)
                    mask[y:y + d, x:x + d] = 1
                    img[mask == 1] = 230
            ip, mp = raw / f"{split}{i}.png", raw / f"{split}{i}_mask.png"
            Image.fromarray(img).save(ip)
            Image.fromarray(mask * 255).save(mp)
            samples.append(RawSample(id=f"{split}/{i}", image=ip, group="g", split=split, mask=mp))
    parsed = ParsedDataset(name="bench", source={"dataset": "bench"}, license="CC0", samples=samples)
    return write_dataset(parsed, Path(root) / "data", raw=raw, val_fraction=val_fraction, seed=0, workers=1,
                         progress=False)


class TrainFailed(RuntimeError):
    """`asset train` exited with an error; the message carries the end of its output."""


def train_model(out: Path, dataset: Path, arch: str = "unet", encoder: str = "mobilenet_v2", *, epochs: int = 30,
                batch_size: int = 8, lr: float = 3e-3, loss: str = "bce_dice", limit_batches: int | None = None,
                extra: tuple[str, ...] = (), log=None) -> Path:
    """`asset train` of `arch`/`encoder` (random init: nothing downloaded) on `dataset` into `out`; returns `out`.
    The run's output goes to OUT.train.txt; on failure its last lines are raised (TrainFailed)."""
    out = Path(out)
    cmd = [sys.executable, "-m", "asset.cli", "train", "--data", str(dataset), "--out", str(out), "--arch", arch,
           "--encoder", encoder, "--encoder-weights", "none", "--epochs", str(epochs), "--lr", str(lr), "--loss",
           loss, "--batch-size", str(batch_size), "--no-progress", "--set", "trainer.log_every_n_steps=1",
           "--set", "thresholds.min_calibration_defects=1"]
    if limit_batches is not None:
        cmd += ["--set", f"trainer.limit_train_batches={int(limit_batches)}",
                "--set", f"trainer.limit_val_batches={int(limit_batches)}"]
    cmd += list(extra)
    transcript = out.parent / f"{out.name}.train.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    if log:
        log(f"asset train {arch}/{encoder}, {epochs} epoch(s) on {dataset} -> {out}")
    with open(transcript, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    if rc != 0 or not (out / "model.json").is_file():
        tail = "\n".join(transcript.read_text(errors="replace").splitlines()[-25:])
        raise TrainFailed(f"`asset train` failed (exit status {rc}): {' '.join(cmd[1:])}\n{tail}")
    return out
