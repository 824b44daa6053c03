"""Bounded inference for images of any size: what keeps one upload from costing more than the model was made for.

With the `pad` size policy (no fixed canvas) the network would run at the full size of whatever it is given:
a 6000x6000 image is a 36-megapixel network input, tens of GB of activations. `Tiler` bounds it by the size
the model was trained at (model.json `input.train_size`, T = th x tw) and a factor F:

- an image whose padded network input is at most F x T pixels runs whole, exactly as without the bound;
- a larger one is cut into overlapping tiles of the training size (a quarter of a tile overlaps its
  neighbour); when more than F tiles would be needed at full resolution, the image is first shrunk (aspect
  kept, INTER_AREA) just enough that F tiles cover it. The tiles' logits are averaged where they overlap,
  giving a logit map at the working scale, which is resized back to the original size (bilinear, in blocks,
  so no full-size float map is ever held) and thresholded as `Algorithm.postprocess` does.

So a network call never sees more than F x T pixels per image, and memory beyond the decoded image and its
mask (both at the upload's size, what the API returns) is bounded by F x T too.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from asset.algorithm import Algorithm, AlgorithmError, Prediction, sigmoid

DEFAULT_MAX_INPUT_FACTOR = 16.0
BLOCK = (512, 4096)  # rows x columns resized back at a time (cv2 maps are limited to 32767 per side)


def train_size(card: dict) -> tuple[int, int]:
    """The network input size (H, W) the model was trained at, from its card.

    Cards written before `input.train_size` existed: a fixed canvas (`size_policy.size`) is that size;
    a free `pad` policy records nothing usable, so such a card is refused (retraining writes the size)."""
    inp = card.get("input") or {}
    size = inp.get("train_size") or (inp.get("size_policy") or {}).get("size")
    if not size:
        raise AlgorithmError(
            "model.json has no input.train_size (the network input size the model was trained at): the card was "
            "written by an older asset and its size policy has no fixed size to take instead. Retrain the model "
            "with this version (`asset train`) to serve it with a bounded cost per image")
    try:
        h, w = int(size[0]), int(size[1])
    except (TypeError, ValueError, IndexError):
        raise AlgorithmError(f"model.json input.train_size {size!r} is not [H, W]") from None
    if h < 1 or w < 1:
        raise AlgorithmError(f"model.json input.train_size {size!r} must be positive")
    return h, w


def axis_count(length: int, tile: int) -> int:
    """Tiles along one axis when neighbours overlap by at least a quarter of a tile."""
    return 1 if length <= tile else -(-(length - tile) // (tile - tile // 4)) + 1


def axis_starts(length: int, tile: int) -> list[int]:
    """Tile offsets along one axis: the first at 0, the last ending at `length`, spread evenly."""
    n = axis_count(length, tile)
    return [0] if n == 1 else [round(i * (length - tile) / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class TilePlan:
    work: tuple[int, int]  # the image size at the working scale (<= the original)
    tile: tuple[int, int]
    ys: list[int]
    xs: list[int]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


class Tiler:
    """Runs one large image as bounded tiles through `infer` (N x C x th x tw float32 -> N x 1 x th x tw logits)."""

    def __init__(self, algorithm: Algorithm, tile: tuple[int, int], max_factor: float = DEFAULT_MAX_INPUT_FACTOR):
        if max_factor < 1:
            raise AlgorithmError(f"max input factor must be >= 1, got {max_factor}")
        d = algorithm.size_policy.divisor
        self.algorithm = algorithm
        self.tile = (-(-int(tile[0]) // d) * d, -(-int(tile[1]) // d) * d)
        self.max_tiles = max(1, int(max_factor))
        self.max_pixels = int(max_factor * self.tile[0] * self.tile[1])  # per image, in the network

    def needs_tiles(self, height: int, width: int) -> bool:
        h, w = self.algorithm.size_policy.network_shape(height, width)
        return h * w > self.max_pixels

    def plan(self, height: int, width: int) -> TilePlan:
        """The largest working scale (<= 1) at which at most max_tiles tiles cover the image."""
        th, tw = self.tile

        def size(scale: float) -> tuple[int, int]:
            return max(1, round(height * scale)), max(1, round(width * scale))

        def fits(scale: float) -> bool:
            h, w = size(scale)
            return axis_count(h, th) * axis_count(w, tw) <= self.max_tiles

        scale = 1.0
        if not fits(scale):  # the count grows with the scale: bisect for the largest scale that fits
            low, high = min(th / height, tw / width), 1.0  # at `low` one tile covers the image
            for _ in range(40):
                mid = (low + high) / 2
                low, high = (mid, high) if fits(mid) else (low, mid)
            scale = low
        h, w = size(scale)
        return TilePlan((h, w), (th, tw), axis_starts(h, th), axis_starts(w, tw))

    def predict(self, image: np.ndarray, infer, batch_size: int, image_threshold: float | None = None,
                keep_prob: bool = False) -> Prediction:
        """One uint8 HxW / HxWxC image -> its Prediction at the original size."""
        alg = self.algorithm
        height, width = image.shape[:2]
        plan = self.plan(height, width)
        (wh, ww), (th, tw) = plan.work, plan.tile
        work = image
        if (wh, ww) != (height, width):
            work = cv2.resize(np.ascontiguousarray(image), (ww, wh), interpolation=cv2.INTER_AREA)
        work = alg.to_channels(work)  # after the shrink: a grey upload given to an RGB model is copied small
        if wh < th or ww < tw:  # thinner than a tile: replicate the border, as the pad policy does
            work = np.pad(work, ((0, max(0, th - wh)), (0, max(0, tw - ww)), (0, 0)), mode="edge")
        total = np.zeros((max(wh, th), max(ww, tw)), np.float32)
        weight = np.zeros_like(total)
        origins = [(y, x) for y in plan.ys for x in plan.xs]
        step = max(1, min(int(batch_size), self.max_tiles))
        image_logit = None  # a decision head's image logit: the largest over the tiles (defective if any tile is)
        for start in range(0, len(origins), step):
            part = origins[start:start + step]
            x, metas = alg.preprocess([work[y:y + th, x0:x0 + tw] for y, x0 in part])
            logits = np.asarray(infer(x), dtype=np.float32)
            for meta, lg in zip(metas, logits):
                tile_logit = alg.image_logit(lg, meta)
                if tile_logit is not None:
                    image_logit = tile_logit if image_logit is None else max(image_logit, tile_logit)
            if logits.ndim == 4:
                logits = logits[:, 0]
            for (y, x0), lg in zip(part, logits):
                total[y:y + th, x0:x0 + tw] += lg
                weight[y:y + th, x0:x0 + tw] += 1.0
        work_logits = (total / np.maximum(weight, 1.0))[:wh, :ww]
        return self._decide(work_logits, (height, width), image_threshold, keep_prob, image_logit)

    def _decide(self, logits: np.ndarray, original: tuple[int, int], image_threshold: float | None,
                keep_prob: bool, image_logit: float | None = None) -> Prediction:
        """Working-scale logits -> mask at the original size, resized block by block."""
        alg = self.algorithm
        t = alg.image_threshold if image_threshold is None else float(image_threshold)
        if not 0.0 <= t <= 1.0:
            raise AlgorithmError(f"image threshold must be in [0, 1], got {t}")
        h, w = original
        mask = np.empty((h, w), np.uint8)
        prob = np.empty((h, w), np.float32) if keep_prob else None
        top = -np.inf
        for r0, c0, block in upsample_blocks(logits, h, w):
            rows, cols = block.shape
            mask[r0:r0 + rows, c0:c0 + cols] = block >= alg.logit_threshold
            top = max(top, float(block.max()))
            if prob is not None:
                prob[r0:r0 + rows, c0:c0 + cols] = sigmoid(block)
        fraction = float(np.count_nonzero(mask)) / mask.size
        max_prob = float(sigmoid(np.float32(top)))
        score, value, defective = alg.decide(fraction, max_prob, image_logit, t)
        return Prediction(mask=mask, defect_fraction=fraction, score=score, defective=defective, threshold=t,
                          max_prob=max_prob, prob=prob, value=value)


def upsample_blocks(src: np.ndarray, height: int, width: int):
    """Yield (row, col, block) of `src` resized to height x width (bilinear, pixel centres aligned as
    cv2.resize does), one block of at most BLOCK pixels at a time."""
    src = np.ascontiguousarray(src, dtype=np.float32)
    sh, sw = src.shape
    sy, sx = sh / height, sw / width
    for r0 in range(0, height, BLOCK[0]):
        rows = min(BLOCK[0], height - r0)
        for c0 in range(0, width, BLOCK[1]):
            cols = min(BLOCK[1], width - c0)
            # dst(x, y) = src(sx * (x + c0 + 0.5) - 0.5, sy * (y + r0 + 0.5) - 0.5)
            m = np.float64([[sx, 0, sx * (c0 + 0.5) - 0.5], [0, sy, sy * (r0 + 0.5) - 0.5]])
            block = cv2.warpAffine(src, m, (cols, rows), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REPLICATE)
            yield r0, c0, block.reshape(rows, cols)
