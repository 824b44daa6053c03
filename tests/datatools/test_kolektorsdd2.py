"""KolektorSDD2 datatool end to end (the `(copy)` quirk included), and bit-exact mask RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datatools.cli import main
from datatools.errors import DatasetError
from datatools.kolektorsdd2.parser import parse_kolektorsdd2
from datatools.masks import decode_mask, encode_mask, mask_area
from tests.datatools import rawfixtures as rf


def convert(capsys, *args: str) -> Path:
    assert main(["convert", "kolektorsdd2", *args]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_end_to_end(tmp_path, capsys):
    info = rf.write_kolektorsdd2(tmp_path / "raw")
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    version = convert(capsys, "--raw", raw, "--out", out, "--workers", "2")
    assert main(["validate", str(version)]) == 0
    doc = json.loads((version / "dataset.json").read_text())
    ids = {s["id"]: s["defective"] for s in doc["samples"]}
    assert ids == info.ids and not any("copy" in i for i in ids)
    assert {s["group"] for s in doc["samples"]} == {"ksdd2"}
    sizes = {(s["height"], s["width"]) for s in doc["samples"]}
    assert len(sizes) > 3 and all(s["channels"] == 3 for s in doc["samples"])
    for s in doc["samples"]:
        official = info.splits[s["id"]]
        assert s["split"] == "test" if official == "test" else s["split"] in ("train", "val")
        raw_img = tmp_path / "raw" / f"{s['id']}.png"
        assert np.array_equal(np.asarray(Image.open(version / s["image"])), np.asarray(Image.open(raw_img)))
        gt = tmp_path / "raw" / f"{s['id']}_GT.png"
        assert np.array_equal(decode_mask(s["mask"]), (np.asarray(Image.open(gt).convert("L")) > 0).astype(np.uint8))
    counts = doc["splits"]
    assert counts["test"] == {"images": info.count("test"), "defective": info.count("test", True)}
    assert counts["train"]["images"] + counts["val"]["images"] == info.count("train")
    # val stratified by label: both OK and defective images carved, both kept in train
    for defective in (False, True):
        assert any(s["split"] == "val" and s["defective"] == defective for s in doc["samples"])
        assert any(s["split"] == "train" and s["defective"] == defective for s in doc["samples"])

    again = convert(capsys, "--raw", raw, "--out", str(tmp_path / "out2"), "--workers", "1")
    assert again.name == version.name
    assert (again / "dataset.json").read_bytes() == (version / "dataset.json").read_bytes()
    other = convert(capsys, "--raw", raw, "--out", out, "--val-fraction", "0.4")
    assert other.name != version.name


def test_copy_duplicates_left_out(tmp_path, capsys):
    rf.write_kolektorsdd2(tmp_path)
    assert (tmp_path / "train" / "10301 (copy).png").is_file()
    parsed = parse_kolektorsdd2(tmp_path)
    assert "10301 (copy).png" in capsys.readouterr().err
    assert all("copy" not in s.image.name and "copy" not in s.mask.name for s in parsed.samples)
    assert sum(s.id == "train/10301" for s in parsed.samples) == 1


def test_missing_gt_and_layout(tmp_path):
    rf.write_kolektorsdd2(tmp_path / "top" / "KolektorSDD2")
    good = tmp_path / "top" / "KolektorSDD2"
    with pytest.raises(DatasetError, match=r"train: folder is missing.*did you mean --raw .*KolektorSDD2"):
        parse_kolektorsdd2(tmp_path / "top")
    (good / "test" / "20003_GT.png").unlink()
    with pytest.raises(DatasetError, match=r"20003_GT.png: mask of 20003.png is missing"):
        parse_kolektorsdd2(good)
    (good / "test" / "20003.png").unlink()
    (good / "train" / "10299.png").unlink()
    with pytest.raises(DatasetError, match=r"10299_GT.png: mask without its image"):
        parse_kolektorsdd2(good)


# ------------------------------------------------------------------ masks (COCO RLE) round trip

@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (13, 17), (64, 40), (241, 665)])
def test_mask_round_trip_random(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.01, 0.5, 0.99):
        mask = (rng.random(shape) < density).astype(np.uint8)
        rle = encode_mask(mask)
        assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
        back = decode_mask(json.loads(json.dumps(rle)))
        assert back.dtype == np.uint8 and back.shape == shape and np.array_equal(back, mask)
        assert mask_area(rle) == int(mask.sum())


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (33, 65)])
def test_mask_round_trip_edge_cases(shape):
    h, w = shape
    cases = [np.zeros(shape, np.uint8), np.ones(shape, np.uint8)]
    for y, x in ((0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1), (h - 1, 0)):
        single = np.zeros(shape, np.uint8)
        single[y, x] = 1
        cases.append(single)
    stripes = np.zeros(shape, np.uint8)
    stripes[:, ::2] = 1
    cases.append(stripes)
    for mask in cases:
        back = decode_mask(encode_mask(mask))
        assert np.array_equal(back, mask)
        assert mask_area(encode_mask(mask)) == int(mask.sum())


def test_mask_round_trip_bool_and_255_inputs():
    mask = np.zeros((9, 11), np.uint8)
    mask[2:5, 3:8] = 1
    assert np.array_equal(decode_mask(encode_mask(mask.astype(bool))), mask)
    with pytest.raises(ValueError):
        encode_mask(np.zeros((2, 2, 3), np.uint8))
