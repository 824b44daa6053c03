"""Tiny standard-format datasets for the asset tests (built here, through datatools' writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datatools.convert import write_dataset
from datatools.records import ParsedDataset, RawSample


def make_dataset(root: Path, n_train: int = 24, n_test: int = 12, size: int = 32, channels: int = 1,
                 seed: int = 0, name: str = "tiny", sizes: list[tuple[int, int]] | None = None,
                 parts_per_object: int | None = None) -> Path:
    """Noise texture; defective images carry a bright square (easy to learn). Half of each split is defective.
    `sizes` (optional) cycles image sizes (H, W) to make a dataset of varying sizes. `parts_per_object` groups
    consecutive images into objects (`group` obj00, obj01, ...; one group "g" otherwise)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / f"raw-{name}"
    raw.mkdir(parents=True, exist_ok=True)
    samples = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            h, w = sizes[i % len(sizes)] if sizes else (size, size)
            img = rng.integers(60, 120, size=(h, w)).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            if i % 2 == 0:
                s = max(3, min(h, w) // 4)
                y, x = rng.integers(0, h - s), rng.integers(0, w - s)
                mask[y:y + s, x:x + s] = 1
                img[mask == 1] = 230
            arr = np.stack([img, img // 2, 255 - img], axis=2) if channels == 3 else img
            ip, mp = raw / f"{split}{i:03d}.png", raw / f"{split}{i:03d}_mask.png"
            Image.fromarray(arr).save(ip)
            Image.fromarray(mask * 255).save(mp)
            group = f"obj-{split}{i // parts_per_object:02d}" if parts_per_object else "g"
            samples.append(RawSample(id=f"{split}/{i:03d}", image=ip, group=group, split=split, mask=mp))
    parsed = ParsedDataset(name=name, source={"dataset": "tiny test set"}, license="CC0", samples=samples)
    return write_dataset(parsed, Path(root) / "data", raw=raw, val_fraction=0.34, seed=seed, workers=1, progress=False)
