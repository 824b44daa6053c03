"""KolektorSDD-like / KolektorSDD2-like synthetic modes: real layouts, real parsers, the statistics of real data."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from datatools.cli import main
from datatools.errors import DatasetError
from datatools.synthetic.kolektor import KolektorOptions, generate_kolektor_layout
from tests.datatools.test_synthetic import tree_digest


def _thin(mask: np.ndarray) -> np.ndarray:
    """Morphological skeleton (Lantuejoul): the union of erosions minus their openings."""
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    img, skel = mask.astype(np.uint8), np.zeros(mask.shape, np.uint8)
    while img.any():
        eroded = cv2.erode(img, kernel)
        skel |= img - cv2.dilate(eroded, kernel)
        img = eroded
    return skel.astype(bool)


def _convert(tmp_path, capsys, *extra):
    args = ["convert", "synthetic", "--out", str(tmp_path / "data"), "--workers", "2", *extra]
    assert main(args) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_kolektorsdd_layout_and_statistics(tmp_path):
    raw = generate_kolektor_layout(tmp_path / "raw", KolektorOptions(images=80, defect_rate=0.125, seed=2), workers=2)
    folders = sorted(p.name for p in raw.iterdir() if p.is_dir())
    assert folders == [f"kos{i:02d}" for i in range(1, 11)]
    images = sorted(raw.glob("kos*/Part*.jpg"))
    assert 70 <= len(images) <= 80 and any(len(list(raw.glob(f"{f}/*.jpg"))) < 8 for f in folders)  # parts missing
    widths, shares, heights = [], [], set()
    for image in images:
        gray = Image.open(image)
        assert gray.mode == "L" and gray.size[0] == 500 and 1235 <= gray.size[1] <= 1285
        heights.add(gray.size[1])
        label = Image.open(image.with_name(f"{image.stem}_label.bmp"))
        assert label.mode == "P" and label.size == gray.size
        raw_idx = np.array(label)
        assert set(np.unique(raw_idx)) <= {0, 1}  # raw indices; only the palette makes 1 white
        mask = np.array(label.convert("L")) > 0
        assert (mask == (raw_idx == 1)).all()
        if mask.any():
            shares.append(mask.mean())
            # width = area / length of the centre line (the crack's 1-px skeleton, by thinning)
            centre = _thin(mask)
            widths.append(mask.sum() / centre.sum())
            # a dark crack: the pixels under the mask are darker than the band around them
            g = np.asarray(gray, np.float32)
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
            assert g[mask].mean() < g[ring].mean() - 15
    assert len(heights) > 10  # heights vary, within folders too
    assert len(shares) == round(0.125 * len(images))
    assert max(shares) < 0.003 and min(shares) > 0.00002  # a small share of the image
    assert min(widths) >= 0.9 and max(widths) <= 5.8 and max(widths) > 3  # 1-5 px wide cracks


def test_kolektorsdd_mode_converts_with_the_real_parser_grouped_by_object(tmp_path, capsys):
    version = _convert(tmp_path, capsys, "--mode", "kolektorsdd", "--images", "120", "--size", "200")
    doc = json.loads((tmp_path / "data" / "synthetic-kolektorsdd" / "latest" / "dataset.json").read_text())
    assert doc["name"] == "synthetic-kolektorsdd" and doc["source"]["options"]["mode"] == "kolektorsdd"
    groups = {}
    for s in doc["samples"]:
        groups.setdefault(s["group"], set()).add(s["split"])
        assert s["channels"] == 1 and s["width"] == 200 and 494 <= s["height"] <= 514
    assert len(groups) == 15 and all(len(splits) == 1 for splits in groups.values())  # an object is never split
    total = sum(c["images"] for c in doc["splits"].values())
    defective = sum(c["defective"] for c in doc["splits"].values())
    assert 0.10 <= defective / total <= 0.15
    assert all(doc["splits"][s]["defective"] > 0 for s in ("train", "val", "test"))
    assert main(["validate", version]) == 0


def test_kolektorsdd2_mode_colour_small_defects(tmp_path, capsys):
    version = _convert(tmp_path, capsys, "--mode", "kolektorsdd2", "--images", "200", "--defect-rate", "0.2")
    doc = json.loads((tmp_path / "data" / "synthetic-kolektorsdd2" / "latest" / "dataset.json").read_text())
    assert doc["splits"]["test"]["images"] == round(200 * 1004 / 3335)
    assert sum(c["defective"] for c in doc["splits"].values()) == 40
    sizes = set()
    for s in doc["samples"]:
        assert s["channels"] == 3 and 184 <= s["width"] <= 241 and 597 <= s["height"] <= 665
        sizes.add((s["height"], s["width"]))
    assert len(sizes) > 100
    from asset.algorithm import load_mask

    areas = [int(load_mask(s["mask"]).astype(bool).sum()) for s in doc["samples"] if s["defective"]]
    assert min(areas) >= 20 and max(areas) < 0.01 * 241 * 665  # small defects
    assert main(["validate", version]) == 0


@pytest.mark.parametrize("mode", ["kolektorsdd", "kolektorsdd2"])
def test_deterministic_same_seed_same_version(tmp_path, capsys, mode):
    options = KolektorOptions(mode=mode, images=24, defect_rate=0.25, width=160, seed=1)
    a = generate_kolektor_layout(tmp_path / "a", options, workers=1)
    b = generate_kolektor_layout(tmp_path / "b", options, workers=2)
    c = generate_kolektor_layout(tmp_path / "c", KolektorOptions(mode=mode, images=24, defect_rate=0.25,
                                                                  width=160, seed=2), workers=2)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    small = ["--mode", mode, "--images", "24", "--size", "160", "--defect-rate", "0.25"]
    first = _convert(tmp_path, capsys, *small)
    assert _convert(tmp_path, capsys, *small) == first
    assert _convert(tmp_path, capsys, *small, "--gen-seed", "3") != first


def test_bad_options_are_refused(tmp_path, capsys):
    with pytest.raises(DatasetError, match="--images"):
        generate_kolektor_layout(tmp_path / "raw", KolektorOptions(images=2))
    assert main(["convert", "synthetic", "--mode", "kolektorsdd", "--out", str(tmp_path / "o"), "--size", "10"]) == 2
    assert "--size" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not an earlier synthetic output"):
        generate_kolektor_layout(tmp_path / "foreign", KolektorOptions(images=8, width=100))
