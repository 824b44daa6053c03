"""Turning request bytes into an image array, refusing bad input before it costs anything.

Accepted: PNG, JPEG, BMP (sniffed from the bytes, whatever the declared type). 16-bit images are
scaled to 8 bits; images with alpha drop it (RGBA -> RGB, LA -> L); palette images are expanded.
The pixel count is read from the header and checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from asset.algorithm import pil_to_array

SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP"}
RAW_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "application/octet-stream"}


class InputError(Exception):
    """Bad input: `status` is the HTTP status to answer with, the message says what was wrong (in the server's own
    words: a library's exception text goes to `log_detail`, for the server log only)."""

    def __init__(self, status: int, message: str, log_detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.log_detail = log_detail


def sniff(data: bytes) -> str | None:
    for magic, name in SIGNATURES.items():
        if data.startswith(magic):
            return name
    return None


def header_pixels(data: bytes) -> int:
    """Width x height from the image header (no pixel decoded); 0 when there is no readable header (decoding
    then says what is wrong)."""
    kind = sniff(data)
    if kind is None:
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as img:
                width, height = img.size
    except Exception:  # refused with its reason by decode_upload
        return 0
    return width * height


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """bytes -> HxW or HxWx3 uint8; InputError(400/413/415) when they are not a usable image."""
    if not data:
        raise InputError(400, "empty body: send a PNG, JPEG or BMP image")
    kind = sniff(data)
    if kind is None:
        raise InputError(415, "not a PNG, JPEG or BMP image (unrecognised file signature)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[kind])
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(413, f"image is {width}x{height} = {width * height} pixels, over the limit of "
                                      f"{max_pixels}")
            img.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(413, f"image refused as a decompression bomb: its header claims more pixels than an image "
                              f"of this server may have ({max_pixels})", log_detail=f"{type(exc).__name__}: {exc}"
                         ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(400, f"{kind} image does not decode: its data is truncated or corrupt",
                         log_detail=f"{type(exc).__name__}: {exc}") from None
    if img.mode in ("RGBA", "LA", "PA", "P"):
        img = img.convert("RGB" if img.mode in ("RGBA", "PA") or img.mode == "P" else "L")
    return pil_to_array(img)
