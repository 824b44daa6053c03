"""A procedural generator of DAGM-like defect images, written in the DAGM 2007 full-release layout.

Why: the project needs an embedded default dataset that any machine can make in seconds, with no
download, that exercises the real DAGM parser, and that a small segmenter can learn. Each class is
a texture family; defects are soft elliptic blobs and thin curved scratches placed at random, and
the mask is exactly the defect footprint. Everything derives from (seed, class, split, id), so the
same options always give byte-identical files, whatever the number of worker processes.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from datatools.convert import default_workers
from datatools.errors import DatasetError

TEXTURES = ("granular", "woven", "brushed", "blotchy", "cloudy", "dotted")
MARKER = ".synthetic-dagm"


@dataclass(frozen=True)
class SyntheticOptions:
    classes: int = 4
    size: int = 128
    train_per_class: int = 120
    test_per_class: int = 60
    defect_rate: float = 0.35
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.classes <= len(TEXTURES) * 4:
            raise DatasetError(f"--classes must be in 1..{len(TEXTURES) * 4}, got {self.classes}")
        if self.size < 32:
            raise DatasetError(f"--size must be at least 32 pixels, got {self.size}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise DatasetError("--train-per-class and --test-per-class must be at least 1")
        if self.train_per_class + self.test_per_class > 9999:
            raise DatasetError("--train-per-class + --test-per-class must be at most 9999 (DAGM ids have 4 digits)")
        if not 0.0 <= self.defect_rate <= 1.0:
            raise DatasetError(f"--defect-rate must be in [0, 1], got {self.defect_rate}")


def _rng(*key) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    return x / (x.std() + 1e-6)


def _filtered_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    return _normalise(cv2.GaussianBlur(noise, (0, 0), sigma))


def texture(kind: str, rng: np.random.Generator, size: int, variant: int) -> np.ndarray:
    """A float32 texture, mean ~0.5, range ~[0.1, 0.9]. `variant` changes scale per class."""
    s = size / 128.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "granular":
        t = 0.7 * _filtered_noise(rng, size, 0.8 * s * (1 + 0.3 * variant)) + 0.3 * _filtered_noise(rng, size, 4 * s)
        contrast = 0.09
    elif kind == "woven":
        period = (6 + 2 * variant) * s
        phase = rng.uniform(0, 2 * np.pi, 2)
        t = np.sin(2 * np.pi * xx / period + phase[0]) * np.sin(2 * np.pi * yy / period + phase[1])
        t = _normalise(t + 0.35 * _filtered_noise(rng, size, 0.7 * s))
        contrast = 0.08
    elif kind == "brushed":
        noise = rng.standard_normal((size, size)).astype(np.float32)
        k = int(max(3, (15 + 6 * variant) * s)) | 1
        angle = rng.uniform(-15, 15)
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), angle, 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        kernel /= kernel.sum()
        t = _normalise(cv2.filter2D(noise, -1, kernel, borderType=cv2.BORDER_REFLECT))
        contrast = 0.08
    elif kind == "blotchy":
        t = _normalise(np.tanh(1.5 * _filtered_noise(rng, size, (6 + 2 * variant) * s))
                       + 0.3 * _filtered_noise(rng, size, 1.0 * s))
        contrast = 0.08
    elif kind == "cloudy":
        t = _normalise(_filtered_noise(rng, size, 12 * s) + 0.5 * _filtered_noise(rng, size, 3 * s)
                       + 0.25 * _filtered_noise(rng, size, 0.8 * s))
        contrast = 0.07
    else:  # dotted
        t = np.zeros((size, size), np.float32)
        step = int((8 + 2 * variant) * s)
        jitter = rng.integers(-1, 2, (size // step + 2, size // step + 2, 2))
        for i in range(0, size + step, step):
            for j in range(0, size + step, step):
                dy, dx = jitter[i // step, j // step]
                cv2.circle(t, (j + int(dx), i + int(dy)), max(1, step // 4), 1.0, -1)
        t = _normalise(cv2.GaussianBlur(t, (0, 0), 0.8 * s) + 0.3 * _filtered_noise(rng, size, 0.8 * s))
        contrast = 0.08
    base = 0.5 + rng.uniform(-0.08, 0.08)
    return base + contrast * t


def _ellipse_defect(rng: np.random.Generator, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    a = rng.uniform(0.06, 0.16) * size
    b = a * rng.uniform(0.3, 0.9)
    margin = int(a) + 2
    cx, cy = rng.integers(margin, size - margin, 2)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(a), max(int(b), 2)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask


def _scratch_defect(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin curved line: a quadratic Bezier curve through random points."""
    mask = np.zeros((size, size), np.uint8)
    length = rng.uniform(0.3, 0.7) * size
    angle = rng.uniform(0, np.pi)
    centre = rng.uniform(0.25, 0.75, 2) * size
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    p0 = centre - direction * length / 2
    p2 = centre + direction * length / 2
    p1 = centre + normal * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0, 1, 64)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    points = np.clip(points, 0, size - 1)
    thickness = max(2, int(round(rng.uniform(0.015, 0.03) * size)))
    cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1, thickness=thickness)
    return mask


def render(options: SyntheticOptions, class_index: int, split: str, ident: int, defective: bool):
    """One image (uint8) and its mask (uint8 0/255), deterministic in its arguments."""
    rng = _rng(options.seed, class_index, split, ident)
    kind = TEXTURES[(class_index - 1) % len(TEXTURES)]
    variant = (class_index - 1) // len(TEXTURES)
    image = texture(kind, rng, options.size, variant)
    mask = np.zeros((options.size, options.size), np.uint8)
    if defective:
        count = 1 + int(rng.random() < 0.25)
        for _ in range(count):
            shape = _scratch_defect(rng, options.size) if rng.random() < 0.5 else _ellipse_defect(rng, options.size)
            soft = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 0.8)
            sign = -1.0 if rng.random() < 0.7 else 1.0
            strength = rng.uniform(0.14, 0.26)
            image = image + sign * strength * soft
            mask |= shape
    image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return image, mask * 255


def _encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - OpenCV never fails on uint8 grayscale
        raise DatasetError("PNG encoding failed")
    return buf.tobytes()


def _plan(options: SyntheticOptions) -> list[tuple[int, str, int, bool]]:
    """(class, split folder, id, defective) for every image, ids as in DAGM classes 7-10."""
    jobs = []
    for c in range(1, options.classes + 1):
        for folder, count, first in (("Train", options.train_per_class, options.test_per_class + 1),
                                     ("Test", options.test_per_class, 1)):
            rng = _rng(options.seed, "labels", c, folder)
            n_def = int(round(options.defect_rate * count))
            flags = np.zeros(count, bool)
            flags[rng.permutation(count)[:n_def]] = True
            jobs.extend((c, folder, first + i, bool(flags[i])) for i in range(count))
    return jobs


def _write_one(args: tuple[SyntheticOptions, str, tuple[int, str, int, bool]]) -> str:
    options, root, (c, folder, ident, defective) = args
    image, mask = render(options, c, folder, ident, defective)
    split_dir = Path(root) / f"Class{c}" / folder
    (split_dir / f"{ident:04d}.PNG").write_bytes(_encode_png(image))
    if defective:
        (split_dir / "Label" / f"{ident:04d}_label.PNG").write_bytes(_encode_png(mask))
    return ""


def _labels_txt(rows: list[tuple[int, bool]]) -> bytes:
    lines = ["1"]
    for ident, defective in rows:
        name = f"{ident:04d}"
        if defective:
            lines.append(f"{name}\t1\t{name}.PNG\t0\t{name}_label.PNG")
        else:
            lines.append(f"{name}\t0\t{name}.PNG\t0\t0\t")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _swap_into_place(staging: Path, raw: Path) -> None:
    """Rename `staging` to `raw`; an existing `raw` (empty or an earlier output) is moved aside first."""
    if not raw.exists():
        os.rename(staging, raw)
        return
    old = raw.with_name(f".{raw.name}.old-{os.getpid()}")
    try:
        os.rename(raw, old)
    except OSError:
        # A mount point (a Docker volume passed as --raw) cannot be renamed: replace its content.
        # The marker goes first, so an interrupted move leaves a folder the next run may replace.
        for child in raw.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        for child in sorted(staging.iterdir(), key=lambda c: c.name != MARKER):
            shutil.move(str(child), str(raw / child.name))
        shutil.rmtree(staging, ignore_errors=True)
        return
    try:
        os.rename(staging, raw)
    except BaseException:
        os.rename(old, raw)
        raise
    shutil.rmtree(old, ignore_errors=True)


def generate_dagm_layout(
    raw: Path,
    *,
    classes: int = 4,
    size: int = 128,
    train_per_class: int = 120,
    test_per_class: int = 60,
    defect_rate: float = 0.35,
    seed: int = 0,
    workers: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Write a synthetic DAGM full-release layout into `raw` and return it.

    The folder is built beside `raw` under a temporary name and renamed into place. An existing
    `raw` is replaced only when it is an earlier synthetic output (it holds the marker file).
    """
    options = SyntheticOptions(classes, size, train_per_class, test_per_class, defect_rate, seed)
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
        jobs = _plan(options)
        rows: dict[tuple[int, str], list[tuple[int, bool]]] = {}
        for c, folder, ident, defective in jobs:
            rows.setdefault((c, folder), []).append((ident, defective))
        for (c, folder), entries in rows.items():
            label_dir = staging / f"Class{c}" / folder / "Label"
            label_dir.mkdir(parents=True)
            (label_dir / "Labels.txt").write_bytes(_labels_txt(entries))
        tasks = [(options, str(staging), job) for job in jobs]
        write_images(_write_one, tasks, "generating synthetic", workers, progress, chunksize=16)
        (staging / MARKER).write_text("generated by datatools.synthetic; safe to delete\n")
        _swap_into_place(staging, raw)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return raw


def write_images(write_one, tasks: list, desc: str, workers: int | None, progress: bool | None,
                 chunksize: int = 16) -> None:
    """Run `write_one` (a module-level function) over `tasks` with a progress bar, in forked worker
    processes when there is enough work for them."""
    workers = workers or default_workers()
    bar = tqdm(total=len(tasks), desc=desc, unit="img", file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    if workers > 1 and len(tasks) > 2 * chunksize:
        # One OpenCV thread per worker: the processes already use every CPU, and OpenCV's own
        # threads on top only oversubscribe them (the pixels are the same either way). It is
        # set in the parent before forking: changing it in a forked child can deadlock on the
        # parent's thread pool.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for _ in pool.imap_unordered(write_one, tasks, chunksize=chunksize):
                    bar.update()
        finally:
            cv2.setNumThreads(threads)
    else:
        for task in tasks:
            write_one(task)
            bar.update()
    bar.close()
