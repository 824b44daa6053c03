"""Masks as COCO compressed RLE, through pycocotools (bit-exact round trips)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


def encode_mask(mask: np.ndarray) -> dict:
    """Binary HxW mask -> {"size": [h, w], "counts": "<ascii>"}."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict) -> np.ndarray:
    """{"size", "counts"} -> HxW uint8 array of 0/1."""
    counts = rle["counts"]
    coco = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return np.ascontiguousarray(coco_mask.decode(coco))


def mask_area(rle: dict) -> int:
    """Number of defect pixels, without decoding the mask."""
    counts = rle["counts"]
    coco = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return int(coco_mask.area(coco))
