"""Bad raw input gives a clear error, never a traceback (issue 27): an image whose header claims a decompression
bomb, a DAGM ellipse label with an infinite or NaN value; and the store's temporary link names do not collide
between runs that share a PID (every containerised run is PID 1)."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from datatools import store
from datatools.dagm.parser import parse_ellipse_labels
from datatools.errors import DatasetError
from datatools.imageio import decode_image_bytes


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose IHDR says width x height (CRC fixed): what a decompression bomb's header looks like."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = 8 + 8  # signature, then IHDR's length and type
    data[start:start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:start + 13])) & 0xFFFFFFFF
    data[start + 13:start + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_a_decompression_bomb_is_a_clear_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match=r"bomb.png: the image header claims more than \d+ pixels"):
        decode_image_bytes(png_claiming(100_000, 100_000), tmp_path / "bomb.png")


@pytest.mark.parametrize("line", ["1\t10\t5\t0.5\tinf\t20", "1\t10\t5\t0.5\t30\t-inf", "1\tinf\t5\t0.5\t30\t20",
                                  "1\t10\t5\tnan\t30\t20"])
def test_a_dagm_ellipse_with_a_value_that_is_not_finite_is_refused(tmp_path, line):
    labels = tmp_path / "labels.txt"
    labels.write_text(line + "\n")
    with pytest.raises(DatasetError, match=r"labels.txt: line 1: every value must be a finite number"):
        parse_ellipse_labels(labels)


def test_link_temp_names_do_not_collide_between_runs_with_one_pid(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getpid", lambda: 1)  # as in every container
    (tmp_path / "aaaaaaaaaaaa").mkdir()
    other = tmp_path / f"{store.TMP_PREFIX}{store.LATEST}.1"
    os.symlink("aaaaaaaaaaaa", other)  # another run's link, on its way into place
    store.point_link(tmp_path / store.LATEST, "aaaaaaaaaaaa")
    assert os.readlink(tmp_path / store.LATEST) == "aaaaaaaaaaaa"
    assert other.is_symlink()  # left alone (was: unlinked and reused, so the other run's rename failed)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(store.TMP_PREFIX)] == [other.name]
