"""Builders that write each dataset's raw layout, quirks included, with small generated images.

Each builder returns what it wrote (ids, which are defective) so tests can check counts. Layouts
follow the real releases exactly: DAGM full (CRLF Labels.txt, trailing tab on OK rows,
Thumbs.db strays), DAGM development release (ClassN + ClassN_def, ellipse labels.txt with both
separators), KolektorSDD (kosNN with missing parts, palettised 8-bit BMP masks), KolektorSDD2
(RGB PNGs of varying sizes, the `(copy)` duplicates).
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (32, 32)  # (height, width) of generated DAGM images


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def texture(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def blob_mask(rng: np.random.Generator, shape: tuple[int, int], value: int = 255) -> np.ndarray:
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    y, x = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
    mask[y : y + 3 + int(rng.integers(0, 4)), x : x + 3 + int(rng.integers(0, 4))] = value
    return mask


@dataclass
class RawInfo:
    root: Path
    ids: dict[str, bool] = field(default_factory=dict)  # sample id -> defective
    splits: dict[str, str] = field(default_factory=dict)  # sample id -> official split (if any)

    def count(self, split: str | None = None, defective: bool | None = None) -> int:
        return sum(1 for i, d in self.ids.items()
                   if (split is None or self.splits.get(i) == split) and (defective is None or d == defective))


# ------------------------------------------------------------------------------------ DAGM


def labels_row(ident: str, defective: bool) -> str:
    """One Labels.txt row exactly as the real files have it (CRLF added by the caller)."""
    if defective:
        return f"{ident}\t1\t{ident}.PNG\t0\t{ident}_label.PNG"
    return f"{ident}\t0\t{ident}.PNG\t0\t0\t"


def write_dagm_split(split_dir: Path, rows: list[tuple[str, bool]], rng: np.random.Generator,
                     shape: tuple[int, int] = SIZE, thumbs: bool = True) -> None:
    """Images, masks and a CRLF Labels.txt for one ClassN/{Train,Test} folder."""
    label_dir = split_dir / "Label"
    label_dir.mkdir(parents=True, exist_ok=True)
    lines = ["1"]
    for ident, defective in rows:
        (split_dir / f"{ident}.PNG").write_bytes(png_bytes(texture(rng, shape)))
        if defective:
            (label_dir / f"{ident}_label.PNG").write_bytes(png_bytes(blob_mask(rng, shape)))
        lines.append(labels_row(ident, defective))
    (label_dir / "Labels.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    if thumbs:
        (split_dir / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
        (label_dir / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")


def write_dagm_full(root: Path, classes: dict[int, tuple[int, int]] | None = None, seed: int = 0) -> RawInfo:
    """DAGM full release: ClassN/{Train,Test}/NNNN.PNG + Label/Labels.txt + Label/NNNN_label.PNG.

    classes: {class number: (train images, test images)}; every third image is defective. Train
    ids start at 0576 (classes 1-6) or 1151 (7-10), test ids at 0001, as in the real release.
    """
    classes = classes or {1: (9, 6), 7: (6, 6)}
    rng = np.random.default_rng(seed)
    info = RawInfo(root)
    for n, (n_train, n_test) in classes.items():
        for folder, split, count, first in (("Train", "train", n_train, 576 if n <= 6 else 1151),
                                            ("Test", "test", n_test, 1)):
            rows = [(f"{first + i:04d}", i % 3 == 1) for i in range(count)]
            write_dagm_split(root / f"Class{n}" / folder, rows, rng)
            for ident, defective in rows:
                info.ids[f"Class{n}/{folder}/{ident}"] = defective
                info.splits[f"Class{n}/{folder}/{ident}"] = split
    return info


def write_dagm_around_labels(root: Path, labels_txt: Path, class_dir: str, folder: str,
                             shape: tuple[int, int] = (8, 8)) -> None:
    """Copy a real Labels.txt into ROOT/CLASS/FOLDER/Label and write tiny images/masks for its rows.

    The same image bytes are reused for every row (the parser only needs files to exist).
    """
    split_dir = root / class_dir / folder
    label_dir = split_dir / "Label"
    label_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(labels_txt, label_dir / "Labels.txt")
    image = png_bytes(np.full(shape, 128, np.uint8))
    mask = np.zeros(shape, np.uint8)
    mask[2:5, 3:6] = 255
    mask_bytes = png_bytes(mask)
    for line in labels_txt.read_text().splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) < 5:
            continue
        (split_dir / fields[2]).write_bytes(image)
        if fields[1] == "1":
            (label_dir / fields[4]).write_bytes(mask_bytes)


def write_dagm_dev(root: Path, classes: tuple[int, ...] = (1, 2), n_ok: int = 8, n_def: int = 6,
                   seed: int = 0, shape: tuple[int, int] = (48, 48)) -> RawInfo:
    """Older development release: ClassN/ (OK images) and ClassN_def/ (1.png.. + labels.txt).

    labels.txt columns: index, semi-major, semi-minor, angle (rad), centre x, centre y; the
    separator alternates between a tab and a tab plus a space, as in the real files.
    """
    rng = np.random.default_rng(seed)
    info = RawInfo(root)
    for n in classes:
        ok_dir, def_dir = root / f"Class{n}", root / f"Class{n}_def"
        ok_dir.mkdir(parents=True)
        def_dir.mkdir(parents=True)
        for i in range(1, n_ok + 1):
            (ok_dir / f"{i}.png").write_bytes(png_bytes(texture(rng, shape)))
            info.ids[f"Class{n}/{i}"] = False
        lines = []
        for i in range(1, n_def + 1):
            (def_dir / f"{i}.png").write_bytes(png_bytes(texture(rng, shape)))
            sep = "\t" if i % 2 else "\t "
            values = [f"{i}", f"{8 + i % 5:.6f}", f"{3 + i % 3:.6f}", f"{rng.uniform(0, 3.14):.6f}",
                      f"{rng.uniform(14, shape[1] - 14):.6f}", f"{rng.uniform(14, shape[0] - 14):.6f}"]
            lines.append(sep.join(values))
            info.ids[f"Class{n}_def/{i}"] = True
        (def_dir / "labels.txt").write_text("\n".join(lines) + "\n")
        (ok_dir / "Thumbs.db").write_bytes(b"stray")
    return info


# ------------------------------------------------------------------------------ KolektorSDD

# folder -> parts present (missing parts on purpose) and which of them are defective
KSDD_LAYOUT: dict[str, dict[int, bool]] = {
    "kos01": {0: False, 1: False, 2: True, 3: False, 5: False, 6: False, 7: False},  # no Part4
    "kos02": {0: False, 1: False, 2: False, 3: False},
    "kos03": {0: False, 2: True, 4: False},
    "kos04": {1: False, 3: False, 6: False},
    "kos05": {0: False, 1: True, 2: False, 3: False, 4: False, 5: False},
    "kos06": {0: False, 7: False},
    "kos07": {0: False, 1: False, 2: False},
    "kos08": {3: True, 4: False},
    "kos09": {0: False, 1: False},
}


def save_palettised_bmp(path: Path, indices: np.ndarray, palette: list[int]) -> None:
    """8-bit palettised BMP whose raw values are palette indices (as in KolektorSDD).

    The palette is padded to 256 entries, as in the real files; Pillow would otherwise write a
    2-entry palette as a 1-bit BMP.
    """
    img = Image.fromarray(indices.astype(np.uint8)).convert("P")
    img.putpalette(palette + [0] * (768 - len(palette)))
    img.save(path, format="BMP")
    assert Image.open(path).mode == "P"


def write_kolektorsdd(root: Path, layout: dict[str, dict[int, bool]] | None = None, seed: int = 0) -> RawInfo:
    """kosNN/PartK.jpg (grayscale JPEG, width 32, heights varying) + PartK_label.bmp (palettised).

    Masks hold raw indices 0/1 with a 2-entry palette (index 1 = white); kos03/Part2 has a
    3-entry palette like the real kos20/Part4: 0 black, 1 (85, 85, 85) on a few pixels, 2 white.
    """
    layout = layout or KSDD_LAYOUT
    rng = np.random.default_rng(seed)
    info = RawInfo(root)
    for folder, parts in layout.items():
        (root / folder).mkdir(parents=True)
        for k, defective in parts.items():
            shape = (40 + (k * 3 + len(folder)) % 7, 32)
            Image.fromarray(texture(rng, shape)).save(root / folder / f"Part{k}.jpg", quality=90)
            indices = blob_mask(rng, shape, value=1) if defective else np.zeros(shape, np.uint8)
            palette = [0, 0, 0, 255, 255, 255]
            if folder == "kos03" and k == 2:
                palette = [0, 0, 0, 85, 85, 85, 255, 255, 255]
                indices = indices * 2
                indices[0, 0:2] = 1
            save_palettised_bmp(root / folder / f"Part{k}_label.bmp", indices, palette)
            info.ids[f"{folder}/Part{k}"] = defective
    (root / "kos02" / "Thumbs.db").write_bytes(b"stray")
    return info


# ----------------------------------------------------------------------------- KolektorSDD2


def write_kolektorsdd2(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> RawInfo:
    """train/ and test/ with NNNNN.png (RGB, varying sizes) + NNNNN_GT.png (0/255), plus the
    archive's `10301 (copy).png` / `10301_GT (copy).png` duplicates and a stray file."""
    rng = np.random.default_rng(seed)
    info = RawInfo(root)
    for split, count, first in (("train", n_train, 10296), ("test", n_test, 20000)):
        folder = root / split
        folder.mkdir(parents=True)
        for i in range(count):
            ident = f"{first + i}"
            shape = (36 + i % 5, 20 + (i * 7) % 6)
            defective = i % 4 == 2
            (folder / f"{ident}.png").write_bytes(png_bytes(texture(rng, (*shape, 3))))
            mask = blob_mask(rng, shape) if defective else np.zeros(shape, np.uint8)
            (folder / f"{ident}_GT.png").write_bytes(png_bytes(mask))
            info.ids[f"{split}/{ident}"] = defective
            info.splits[f"{split}/{ident}"] = split
    train = root / "train"
    if (train / "10301.png").exists():
        shutil.copyfile(train / "10301.png", train / "10301 (copy).png")
        shutil.copyfile(train / "10301_GT.png", train / "10301_GT (copy).png")
    (root / "test" / "Thumbs.db").write_bytes(b"stray")
    return info
