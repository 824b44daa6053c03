"""DAGM 2007 datatool: both releases end to end, the 20 real Labels.txt files, and the ellipse."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datatools.cli import main
from datatools.dagm.parser import parse_dagm, parse_labels_txt
from datatools.errors import DatasetError
from datatools.imageio import rasterise_ellipse
from datatools.masks import decode_mask
from datatools.records import Ellipse
from tests.datatools import rawfixtures as rf

# The DAGM 2007 full release: defective rows per class, classes 1..10
TRAIN_DEFECTIVE = [79, 66, 66, 82, 70, 83, 150, 150, 150, 150]
TEST_DEFECTIVE = [71, 84, 84, 68, 80, 67, 150, 150, 150, 150]


def convert(capsys, *args: str) -> Path:
    assert main(["convert", *args]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def load(version: Path) -> dict:
    return json.loads((version / "dataset.json").read_text())


def assert_val_stratified(doc: dict) -> None:
    """Every (group, label) stratum with 2+ train images gives val at least one and keeps one."""
    pool = Counter((s["group"], s["defective"]) for s in doc["samples"] if s["split"] in ("train", "val"))
    val = Counter((s["group"], s["defective"]) for s in doc["samples"] if s["split"] == "val")
    for stratum, n in pool.items():
        if n >= 2:
            assert 1 <= val[stratum] <= n - 1, stratum


def test_full_release_end_to_end(tmp_path, capsys):
    info = rf.write_dagm_full(tmp_path / "raw")
    out = tmp_path / "out"
    version = convert(capsys, "dagm", "--raw", str(tmp_path / "raw"), "--out", str(out), "--workers", "2")
    assert version.parent == out / "dagm" and version.is_dir()
    assert main(["validate", str(version)]) == 0
    doc = load(version)
    assert doc["source"]["release"] == "full" and doc["source"]["options"]["classes"] == [1, 7]
    assert {s["id"]: s["defective"] for s in doc["samples"]} == info.ids
    for s in doc["samples"]:
        official = info.splits[s["id"]]
        assert s["split"] == "test" if official == "test" else s["split"] in ("train", "val")
        assert s["group"] == s["id"].split("/")[0] and s["channels"] == 1
        raw_image = tmp_path / "raw" / f"{s['id']}.PNG"
        assert s["sha256"] == hashlib.sha256(raw_image.read_bytes()).hexdigest()
        assert (version / s["image"]).read_bytes() == raw_image.read_bytes()
        if s["defective"]:
            raw_mask = raw_image.parent / "Label" / f"{raw_image.stem}_label.PNG"
            assert np.array_equal(decode_mask(s["mask"]), (np.array(Image.open(raw_mask)) > 0).astype(np.uint8))
    counts = doc["splits"]
    assert counts["test"]["images"] == info.count("test")
    assert counts["train"]["images"] + counts["val"]["images"] == info.count("train")
    assert counts["test"]["defective"] == info.count("test", True)
    assert_val_stratified(doc)

    # same input, same options: same version, byte-identical dataset.json
    again = convert(capsys, "dagm", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out2"), "--workers", "1")
    assert again.name == version.name
    assert (again / "dataset.json").read_bytes() == (version / "dataset.json").read_bytes()
    # a changed option: another version holding only Class1
    subset = convert(capsys, "dagm", "--raw", str(tmp_path / "raw"), "--out", str(out), "--classes", "1")
    assert subset.name != version.name
    assert {s["group"] for s in load(subset)["samples"]} == {"Class1"}


def test_development_release_end_to_end(tmp_path, capsys):
    info = rf.write_dagm_dev(tmp_path / "raw")
    version = convert(capsys, "dagm", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"))
    assert main(["validate", str(version)]) == 0
    doc = load(version)
    assert doc["source"]["release"] == "development"
    assert doc["source"]["options"]["test_fraction"] == 0.5
    assert {s["id"]: s["defective"] for s in doc["samples"]} == info.ids
    # no official split: test carved per (class, label), about half of each
    for group in ("Class1", "Class2"):
        for defective, total in ((False, 8), (True, 6)):
            n_test = sum(1 for s in doc["samples"]
                         if s["group"] == group and s["defective"] == defective and s["split"] == "test")
            assert n_test == total // 2
    labels = (tmp_path / "raw" / "Class1_def" / "labels.txt").read_text().splitlines()
    first = labels[0].split()
    expected = rasterise_ellipse(Ellipse(cx=float(first[4]), cy=float(first[5]), semi_major=float(first[1]),
                                         semi_minor=float(first[2]), angle=float(first[3])), (48, 48))
    stored = next(s for s in doc["samples"] if s["id"] == "Class1_def/1")
    assert np.array_equal(decode_mask(stored["mask"]), expected) and expected.any()
    other = convert(capsys, "dagm", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                    "--test-fraction", "0.3")
    assert other.name != version.name


def test_development_labels_both_separators(tmp_path):
    rf.write_dagm_dev(tmp_path, classes=(3,), n_ok=2, n_def=4)
    text = (tmp_path / "Class3_def" / "labels.txt").read_text()
    assert "\t " in text and "\t" in text.replace("\t ", "")
    parsed = parse_dagm(tmp_path)
    ellipses = [s.ellipse for s in parsed.samples if s.ellipse is not None]
    assert len(ellipses) == 4 and parsed.test_fraction == 0.5
    assert all(s.split is None for s in parsed.samples)


def test_real_labels_txt_files(real_fixtures, tmp_path):
    """All real Labels.txt files present: per-class defective counts and id ranges of the release."""
    files = sorted((real_fixtures / "DAGM").glob("Class*/*/Label/Labels.txt"))
    assert files, "no real DAGM Labels.txt fixtures"
    for labels_txt in files:
        rf.write_dagm_around_labels(tmp_path, labels_txt, labels_txt.parents[2].name, labels_txt.parents[1].name)
    classes = sorted(int(p.name[5:]) for p in (real_fixtures / "DAGM").glob("Class*"))
    parsed = parse_dagm(tmp_path)
    assert parsed.source["release"] == "full" and parsed.source["options"]["classes"] == classes
    by_stratum: dict[tuple[str, str], list] = {}
    for s in parsed.samples:
        by_stratum.setdefault((s.group, s.split), []).append(s)
    for n in classes:
        small = n <= 6
        for split, defective, first, count in (
            ("train", TRAIN_DEFECTIVE[n - 1], 576 if small else 1151, 575 if small else 1150),
            ("test", TEST_DEFECTIVE[n - 1], 1, 575 if small else 1150),
        ):
            samples = by_stratum[(f"Class{n}", split)]
            assert sum(s.declared_defective for s in samples) == defective, (n, split)
            ids = sorted(int(s.id.rsplit("/", 1)[1]) for s in samples)
            assert ids == list(range(first, first + count)), (n, split)
            assert all((s.mask is not None) == s.declared_defective for s in samples)
    if len(classes) == 10:
        assert len(parsed.samples) == 16100
        assert sum(s.declared_defective for s in parsed.samples) == 2100


def test_real_labels_txt_row_format(real_fixtures):
    rows = parse_labels_txt(real_fixtures / "DAGM" / "Class1" / "Train" / "Label" / "Labels.txt")
    assert rows[0] == (2, "0576.PNG", False, None)
    assert (21, "0595.PNG", True, "0595_label.PNG") in rows
    assert len(rows) == 575


def test_ellipse_angle_convention():
    """Angle in image coordinates (y down): the major axis points along (cos a, sin a)."""
    size = (61, 61)
    horizontal = rasterise_ellipse(Ellipse(cx=30, cy=30, semi_major=20, semi_minor=3, angle=0.0), size)
    assert horizontal[30, 48] and not horizontal[48, 30]
    vertical = rasterise_ellipse(Ellipse(cx=30, cy=30, semi_major=20, semi_minor=3, angle=math.pi / 2), size)
    assert vertical[48, 30] and not vertical[30, 48]
    diagonal = rasterise_ellipse(Ellipse(cx=30, cy=30, semi_major=20, semi_minor=3, angle=math.pi / 4), size)
    assert diagonal[30 + 12, 30 + 12]  # down-right: positive angle turns x towards +y (down)
    assert not diagonal[30 - 12, 30 + 12]  # up-right stays empty


def write_labels(path: Path, rows: list[str]) -> None:
    path.write_bytes(("\r\n".join(["1", *rows]) + "\r\n").encode())


@pytest.mark.parametrize("row, message", [
    ("0576\t0\t0576.PNG", "line 2: expected 5 tab-separated fields"),
    ("0576\t2\t0576.PNG\t0\t0\t", "line 2: label must be 0 or 1"),
    ("0576\t1\t0576.PNG\t0\t0\t", "line 2: label 1 but no mask file"),
    ("abcd\t0\t0576.PNG\t0\t0\t", "line 2: malformed row"),
])
def test_malformed_labels_row(tmp_path, row, message):
    rf.write_dagm_full(tmp_path, {1: (3, 2)})
    labels = tmp_path / "Class1" / "Train" / "Label" / "Labels.txt"
    write_labels(labels, [row, *labels.read_text().splitlines()[2:]])
    with pytest.raises(DatasetError, match=message) as err:
        parse_dagm(tmp_path)
    assert str(labels) in str(err.value)


def test_image_not_in_labels_txt_is_an_error(tmp_path):
    rf.write_dagm_full(tmp_path, {2: (3, 2)})
    extra = tmp_path / "Class2" / "Test" / "0099.PNG"
    extra.write_bytes((tmp_path / "Class2" / "Test" / "0001.PNG").read_bytes())
    with pytest.raises(DatasetError, match="not listed in") as err:
        parse_dagm(tmp_path)
    assert str(extra) in str(err.value)


def test_layout_errors(tmp_path):
    rf.write_dagm_full(tmp_path / "top" / "DAGM", {1: (3, 2)})
    with pytest.raises(DatasetError, match=r"no ClassN folders found.*did you mean --raw .*DAGM"):
        parse_dagm(tmp_path / "top")
    with pytest.raises(DatasetError, match="--classes asks for Class4"):
        parse_dagm(tmp_path / "top" / "DAGM", classes=[1, 4])
    (tmp_path / "top" / "DAGM" / "Class1_def").mkdir()
    with pytest.raises(DatasetError, match="both full-release"):
        parse_dagm(tmp_path / "top" / "DAGM")


def test_lower_case_extensions_accepted(tmp_path):
    info = rf.write_dagm_full(tmp_path, {1: (3, 3)})
    for path in list(tmp_path.rglob("*.PNG")):
        path.rename(path.with_suffix(".png"))
    parsed = parse_dagm(tmp_path)
    assert {s.id: s.declared_defective for s in parsed.samples} == info.ids


def test_class_folders_without_either_release_shape(tmp_path):
    (tmp_path / "Class1").mkdir()
    (tmp_path / "Class1" / "0001.PNG").write_bytes(b"x")
    with pytest.raises(DatasetError, match="Class1: has no Train/Test folders and there is no Class1_def"):
        parse_dagm(tmp_path)
