"""Decoding raw images and masks, with errors that name the file and what is wrong."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from datatools.errors import DatasetError
from datatools.records import Ellipse

# Pillow refuses truncated files by default; keep it that way (a truncated image is an error).
Image.LOAD_TRUNCATED_IMAGES = False


def decode_image_bytes(data: bytes, path: Path) -> Image.Image:
    """Fully decode image bytes (so truncated files fail here, not later)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Image.DecompressionBombError:
        raise DatasetError(f"{path}: the image header claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
                           "(Pillow's decompression-bomb limit): a corrupt or hostile file, not a dataset image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: image does not decode ({exc})") from None
    return img


def image_channels(img: Image.Image) -> int:
    """1 for grayscale-like modes, 3 for colour ones (what a model's input layer needs)."""
    return 1 if img.mode in ("1", "L", "I", "I;16", "F", "LA") else 3


def read_mask_file(path: Path, expected_size: tuple[int, int]) -> np.ndarray:
    """Read a mask file as a 0/1 array: apply any palette (luminance), then test > 0."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: mask cannot be read ({exc.strerror or exc})") from None
    img = decode_image_bytes(data, path)
    if img.mode != "L":
        img = img.convert("L")
    mask = (np.asarray(img) > 0).astype(np.uint8)
    if mask.shape != expected_size:
        h, w = expected_size
        raise DatasetError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is {w}x{h}"
        )
    return mask


def rasterise_ellipse(ellipse: Ellipse, size: tuple[int, int]) -> np.ndarray:
    """Filled ellipse as a 0/1 mask (older DAGM release labels).

    cv2.ellipse's angle convention matches the DAGM labels (image coordinates, y down, major axis
    along (cos a, sin a)); centre and axes keep 8 fractional bits (`shift`) instead of rounding.
    """
    h, w = size
    shift = 8
    scale = 1 << shift
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.ellipse(
        mask,
        center=(round(ellipse.cx * scale), round(ellipse.cy * scale)),
        axes=(max(round(ellipse.semi_major * scale), scale), max(round(ellipse.semi_minor * scale), scale)),
        angle=float(np.degrees(ellipse.angle)),
        startAngle=0,
        endAngle=360,
        color=1,
        thickness=-1,
        shift=shift,
    )
    return mask
