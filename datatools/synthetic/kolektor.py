"""KolektorSDD-like and KolektorSDD2-like synthetic sets, written in the real raw layouts.

Why: the DAGM-like default (large blobs, a third of the images defective) hides what real
industrial data looks like: few images, most of them OK, defects that are thin and a small share
of the image. These modes reproduce that shape so that training recipes can be developed and
tested without the real downloads, and they are converted by the real KolektorSDD / KolektorSDD2
parsers (same code path as the real data):

- kolektorsdd: tall grayscale commutator surfaces (width 500, height 1235-1285, varying within a
  folder), objects `kosNN/` with up to 8 `PartK.jpg` (some missing), `PartK_label.bmp` 8-bit
  palettised masks (raw indices 0/1, the palette maps 1 to white); 10-15% of the images hold one
  thin crack 1-5 px wide and 40-200 px long (about 0.01-0.15% of the image).
- kolektorsdd2: colour PNG patches (width 184-241, height 597-665), `train/` ids from 10000 and
  `test/` ids from 20000 with `NNNNN_GT.png` masks (0/255); about 10.6% defective with small
  spots or short scratches.

Everything derives from (seed, mode, image key), so the same options give byte-identical files
whatever the number of worker processes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from datatools.errors import DatasetError
from datatools.synthetic.generator import MARKER, _rng, _swap_into_place, write_images

MODES = ("kolektorsdd", "kolektorsdd2")
KSDD_WIDTH = 500            # real KolektorSDD width; heights 1235-1285
KSDD2_TEST_SHARE = 1004 / 3335
CRACK_WIDTHS = (1, 5)       # px at the full KolektorSDD width


@dataclass(frozen=True)
class KolektorOptions:
    mode: str = "kolektorsdd"
    images: int = 399          # kolektorsdd: about this many (objects x up to 8 parts); kolektorsdd2: exactly
    defect_rate: float = 0.13
    width: int = KSDD_WIDTH    # kolektorsdd only: image width (height scales with it)
    seed: int = 0

    def check(self) -> None:
        if self.mode not in MODES:
            raise DatasetError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 8 <= self.images <= 20000:
            raise DatasetError(f"--images must be in 8..20000, got {self.images}")
        if not 0.0 <= self.defect_rate <= 1.0:
            raise DatasetError(f"--defect-rate must be in [0, 1], got {self.defect_rate}")
        if not 64 <= self.width <= 2000:
            raise DatasetError(f"--size (image width) must be in 64..2000, got {self.width}")


def default_options(mode: str) -> dict:
    """The real datasets' size and defect share for each mode."""
    if mode == "kolektorsdd2":
        return {"images": 3335, "defect_rate": 356 / 3335, "width": KSDD_WIDTH}
    return {"images": 399, "defect_rate": 0.13, "width": KSDD_WIDTH}


# ----------------------------------------------------------------------------- planning
def plan(options: KolektorOptions) -> list[tuple[str, bool]]:
    """(relative image path without suffix, defective) for every image, in a fixed order."""
    rng = _rng(options.seed, options.mode, "plan")
    if options.mode == "kolektorsdd":
        paths = []
        objects = max(1, round(options.images / 7.8))
        for o in range(1, objects + 1):
            present = [k for k in range(8) if rng.random() >= 0.03] or [0]  # parts missing in places
            paths += [f"kos{o:02d}/Part{k}" for k in present]
    else:
        n_test = max(1, round(options.images * KSDD2_TEST_SHARE))
        n_train = options.images - n_test
        paths = [f"train/{10000 + i}" for i in range(n_train)] + [f"test/{20000 + i}" for i in range(n_test)]
    n_def = int(round(options.defect_rate * len(paths)))
    flags = np.zeros(len(paths), bool)
    flags[rng.permutation(len(paths))[:n_def]] = True
    return [(p, bool(f)) for p, f in zip(paths, flags)]


# ----------------------------------------------------------------------------- rendering
def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return (n - n.mean()) / (n.std() + 1e-6)


def _curve(rng: np.random.Generator, h: int, w: int, length: float, margin: int) -> np.ndarray:
    """Points of a gently bent line (quadratic Bezier) of about `length` px inside the image."""
    angle = rng.uniform(0, np.pi)
    centre = np.array([rng.uniform(margin + length / 2, w - margin - length / 2) if w > 2 * margin + length
                       else w / 2, rng.uniform(margin + length / 2, h - margin - length / 2)])
    d = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-d[1], d[0]])
    p0, p2 = centre - d * length / 2, centre + d * length / 2
    p1 = centre + n * rng.uniform(-0.2, 0.2) * length
    t = np.linspace(0, 1, max(8, int(length)))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    pts[:, 0] = np.clip(pts[:, 0], 0, w - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, h - 1)
    return np.round(pts).astype(np.int32)


def crack_mask(rng: np.random.Generator, h: int, w: int, scale: float) -> tuple[np.ndarray, int]:
    """A thin crack (0/1 uint8) and its width in px: 1-5 px and 40-200 px long at full scale."""
    width = max(1, int(round(rng.integers(CRACK_WIDTHS[0], CRACK_WIDTHS[1] + 1) * scale)))
    length = rng.uniform(40, 200) * scale
    mask = np.zeros((h, w), np.uint8)
    # A 1-px centre line widened by a disc: OpenCV's own thick lines only come in odd widths (2 -> 3 px).
    cv2.polylines(mask, [_curve(rng, h, w, length, int(20 * scale) + 2)], False, 1, thickness=1)
    if width > 1:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
    return mask, width


def surface_marks(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Darkening (float32 H x W, >= 0) of the harmless marks every real part shows and no label covers: dark pits
    2-8 px across and faint vertical grinding streaks. On every image, OK or defective, so that "something dark"
    is not a defect: a model trained without them marked 3-6% of a real KolektorSDD part as defective."""
    marks = np.zeros((h, w), np.float32)
    for _ in range(int(rng.poisson(500))):
        r = max(1, int(round(rng.uniform(1, 4) * scale)))
        cv2.circle(marks, (int(rng.integers(0, w)), int(rng.integers(0, h))), r, float(rng.uniform(0.08, 0.3)), -1)
    marks = cv2.GaussianBlur(marks, (0, 0), max(0.5, 0.7 * scale))
    for _ in range(int(rng.integers(2, 7))):
        x = int(rng.integers(0, w))
        half = max(1, int(round(rng.uniform(0.5, 2) * scale)))
        y0 = int(rng.integers(0, h // 2))
        y1 = int(min(h, y0 + rng.uniform(0.3, 1.0) * h))
        marks[y0:y1, max(0, x - half): x + half] += float(rng.uniform(0.04, 0.1))
    return marks


def render_kolektorsdd(options: KolektorOptions, key: str, defective: bool) -> tuple[np.ndarray, np.ndarray]:
    """A commutator-like surface (uint8 H x W) and its mask (0/1): a bright metal band with
    vertical brushing, a darker rim, fine grain, unlabelled pits and streaks; defective images get one
    dark thin crack."""
    rng = _rng(options.seed, "kolektorsdd", key)
    scale = options.width / KSDD_WIDTH
    w = options.width
    h = int(round(rng.integers(1235, 1286) * scale))
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    band_w = rng.uniform(0.55, 0.75)
    band = 1.0 / (1.0 + np.exp((np.abs(xx) - band_w) * 25))  # the metal band, dark background aside
    shade = 0.55 + 0.25 * band * (1 - 0.5 * xx**2) + rng.uniform(-0.05, 0.05)
    grain = 0.035 * _noise(rng, (h, w), 0.8 * max(scale, 0.5))
    brushed = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigmaX=0.6, sigmaY=12 * scale)
    brushed = 0.05 * brushed / (brushed.std() + 1e-6)
    yy = np.arange(h, dtype=np.float32)[:, None]
    lamellae = 0.03 * np.sin(2 * np.pi * yy / rng.uniform(90, 140) / scale + rng.uniform(0, 6.3))
    image = (shade + band * (grain + brushed + lamellae)).astype(np.float32)
    coarse = 0.06 * _noise(rng, (h, w), 2.5 * max(scale, 0.4))  # the granular look of the real surface
    image = image + band * coarse - band * surface_marks(rng, h, w, scale)
    mask = np.zeros((h, w), np.uint8)
    if defective:
        # the crack lies on the metal band, where real defects are
        inner = np.zeros((h, w), np.uint8)
        inner[:, int(w * (0.5 - band_w / 2.4)): int(w * (0.5 + band_w / 2.4))] = 1
        for _ in range(20):
            mask, _width = crack_mask(rng, h, w, scale)
            if (mask & inner).sum() == mask.sum():
                break
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.6)
        image = image - rng.uniform(0.18, 0.35) * np.maximum(soft, mask)
    return np.clip(image * 255, 0, 255).astype(np.uint8), mask


def render_kolektorsdd2(options: KolektorOptions, key: str, defective: bool) -> tuple[np.ndarray, np.ndarray]:
    """A colour surface patch (uint8 H x W x 3 RGB) and its mask (0/1): small spots or short scratches."""
    rng = _rng(options.seed, "kolektorsdd2", key)
    w, h = int(rng.integers(184, 242)), int(rng.integers(597, 666))
    tint = np.array([rng.uniform(0.9, 1.1), 1.0, rng.uniform(0.8, 1.0)], np.float32)
    base = 0.45 + rng.uniform(-0.08, 0.08) + 0.06 * _noise(rng, (h, w), 10) + 0.03 * _noise(rng, (h, w), 1.0)
    image = base[:, :, None] * tint[None, None, :]
    mask = np.zeros((h, w), np.uint8)
    if defective:
        if rng.random() < 0.5:
            cv2.polylines(mask, [_curve(rng, h, w, rng.uniform(15, 80), 6)], False, 1,
                          thickness=int(rng.integers(2, 5)))
        else:
            axes = (int(rng.integers(3, 14)), int(rng.integers(3, 14)))
            centre = (int(rng.integers(16, w - 16)), int(rng.integers(16, h - 16)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        soft = np.maximum(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8), mask)
        colour = np.array(rng.choice([[-0.3, -0.25, -0.2], [0.25, 0.1, -0.1], [-0.1, -0.25, -0.3]]), np.float32)
        image = image + rng.uniform(0.6, 1.0) * soft[:, :, None] * colour[None, None, :]
    return np.clip(image * 255, 0, 255).astype(np.uint8), mask


# ----------------------------------------------------------------------------- writing
def _palettised_bmp(mask01: np.ndarray) -> Image.Image:
    """8-bit palettised mask as in KolektorSDD: raw indices 0/1, palette 1 -> white (256 entries,
    so Pillow writes an 8-bit BMP, not a 1-bit one)."""
    img = Image.fromarray(mask01.astype(np.uint8)).convert("P")
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * (768 - 6))
    return img


def _write_one(args: tuple[KolektorOptions, str, tuple[str, bool]]) -> None:
    options, root, (rel, defective) = args
    path = Path(root) / rel
    if options.mode == "kolektorsdd":
        image, mask = render_kolektorsdd(options, rel, defective)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:  # pragma: no cover
            raise DatasetError("JPEG encoding failed")
        path.with_suffix(".jpg").write_bytes(buf.tobytes())
        _palettised_bmp(mask).save(path.parent / f"{path.name}_label.bmp", format="BMP")
    else:
        image, mask = render_kolektorsdd2(options, rel, defective)
        for target, array in ((path.with_suffix(".png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)),
                              (path.parent / f"{path.name}_GT.png", mask * 255)):
            ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            if not ok:  # pragma: no cover
                raise DatasetError("PNG encoding failed")
            target.write_bytes(buf.tobytes())


def generate_kolektor_layout(raw: Path, options: KolektorOptions, workers: int | None = None,
                             progress: bool | None = None) -> Path:
    """Write the raw layout of `options.mode` into `raw` (built beside it, renamed into place)."""
    options.check()
    raw = Path(raw)
    if raw.exists() and (not raw.is_dir() or (any(raw.iterdir()) and not (raw / MARKER).exists())):
        raise DatasetError(f"{raw}: exists and is not an earlier synthetic output; choose an empty or new folder")
    try:
        raw.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"{raw.parent}: cannot be created ({exc.strerror or exc})") from None
    staging = raw.with_name(f".{raw.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        jobs = plan(options)
        for folder in sorted({rel.split("/")[0] for rel, _ in jobs}):
            (staging / folder).mkdir(parents=True)
        tasks = [(options, str(staging), job) for job in jobs]
        write_images(_write_one, tasks, f"generating synthetic {options.mode}", workers, progress, chunksize=8)
        (staging / MARKER).write_text("generated by datatools.synthetic; safe to delete\n")
        _swap_into_place(staging, raw)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return raw
