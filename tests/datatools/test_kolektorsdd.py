"""KolektorSDD datatool: generated layout end to end, folds, and the real samples."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datatools.cli import main
from datatools.errors import DatasetError
from datatools.kolektorsdd.parser import parse_kolektorsdd
from datatools.masks import decode_mask
from tests.datatools import rawfixtures as rf


def convert(capsys, *args: str) -> Path:
    assert main(["convert", "kolektorsdd", *args]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def load(version: Path) -> dict:
    return json.loads((version / "dataset.json").read_text())


def splits_by_folder(doc: dict) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for s in doc["samples"]:
        found[s["group"]].add(s["split"])
    return found


def test_end_to_end_folds_and_folders(tmp_path, capsys):
    info = rf.write_kolektorsdd(tmp_path / "raw")
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    version = convert(capsys, "--raw", raw, "--out", out, "--workers", "2")
    assert version.parent == tmp_path / "out" / "kolektorsdd"
    assert main(["validate", str(version)]) == 0
    doc = load(version)
    assert {s["id"]: s["defective"] for s in doc["samples"]} == info.ids
    assert len(doc["samples"]) == sum(len(p) for p in rf.KSDD_LAYOUT.values())  # missing parts respected
    assert doc["source"]["options"] == {"annotation": "fine", "folds": 3, "seed": 0, "test_fold": 0, "val_fraction": 0.2}

    # a kosNN folder is never split: one split and one fold per folder
    per_folder = splits_by_folder(doc)
    assert all(len(splits) == 1 for splits in per_folder.values()), per_folder
    folds: dict[str, set[int]] = defaultdict(set)
    for s in doc["samples"]:
        folds[s["group"]].add(s["fold"])
        assert (s["split"] == "test") == (s["fold"] == 0)
    assert all(len(f) == 1 for f in folds.values())
    # 9 folders, 4 with a defect: 3 folders per fold, every fold holds a defective folder
    fold_sizes = defaultdict(list)
    for group, (fold,) in folds.items():
        fold_sizes[fold].append(any(info.ids[i] for i in info.ids if i.startswith(group + "/")))
    assert sorted(len(v) for v in fold_sizes.values()) == [3, 3, 3]
    assert all(any(v) for v in fold_sizes.values())
    # val: whole folders, at least one defective and one OK folder carved from train
    val_groups = {g for g, sp in per_folder.items() if sp == {"val"}}
    train_groups = {g for g, sp in per_folder.items() if sp == {"train"}}
    assert val_groups and train_groups
    defective_group = {g: any(info.ids[i] for i in info.ids if i.startswith(g + "/")) for g in per_folder}
    assert {defective_group[g] for g in val_groups} == {True, False}
    assert {defective_group[g] for g in train_groups} == {True, False}
    counts = doc["splits"]
    assert sum(c["images"] for c in counts.values()) == len(info.ids)
    assert sum(c["defective"] for c in counts.values()) == sum(info.ids.values())

    again = convert(capsys, "--raw", raw, "--out", str(tmp_path / "out2"), "--workers", "1")
    assert again.name == version.name
    assert (again / "dataset.json").read_bytes() == (version / "dataset.json").read_bytes()
    fold1 = convert(capsys, "--raw", raw, "--out", out, "--test-fold", "1")
    assert fold1.name != version.name
    test0 = {g for g, sp in per_folder.items() if sp == {"test"}}
    test1 = {g for g, sp in splits_by_folder(load(fold1)).items() if sp == {"test"}}
    assert test0.isdisjoint(test1)
    box = convert(capsys, "--raw", raw, "--out", out, "--annotation", "box")
    assert box.name not in (version.name, fold1.name)
    assert load(box)["source"]["annotation"] == "box"


def test_palette_masks(tmp_path):
    """Raw indices 0/1 only become a defect through the palette; the 3-entry palette case too."""
    rf.write_kolektorsdd(tmp_path)
    raw = Image.open(tmp_path / "kos03" / "Part2_label.bmp")
    assert raw.mode == "P" and set(np.unique(np.asarray(raw))) == {0, 1, 2}
    plain = Image.open(tmp_path / "kos01" / "Part2_label.bmp")
    assert plain.mode == "P" and set(np.unique(np.asarray(plain))) == {0, 1}


REAL_MD5 = {
    "kos01/Part5.jpg": "b36961b7c25c06b25b69429b8697cbeb",
    "kos01/Part5_label.bmp": "4f6dab9050f0ad1605c0d76beddf2f95",
    "kos20/Part4_label.bmp": "2378b3ad1d92011b750f0c920e62c9bd",
}


def test_real_samples_end_to_end(real_fixtures, tmp_path, capsys):
    raw = real_fixtures / "KolektorSDD"
    for rel, md5 in REAL_MD5.items():
        assert hashlib.md5((raw / rel).read_bytes()).hexdigest() == md5, rel
    version = convert(capsys, "--raw", str(raw), "--out", str(tmp_path / "out"), "--workers", "2")
    assert main(["validate", str(version)]) == 0
    doc = load(version)
    got = {s["id"]: s["defective"] for s in doc["samples"]}
    assert got == {"kos01/Part5": True, "kos01/Part7": False, "kos02/Part1": False, "kos20/Part4": True}
    for s in doc["samples"]:
        raw_img = Image.open(raw / f"{s['id']}.jpg")
        stored = np.asarray(Image.open(version / s["image"]))
        assert np.array_equal(stored, np.asarray(raw_img))
        assert s["width"] == 500 and 1235 <= s["height"] <= 1285 and s["channels"] == 1
        expected = (np.asarray(Image.open(raw / f"{s['id']}_label.bmp").convert("L")) > 0).astype(np.uint8)
        assert np.array_equal(decode_mask(s["mask"]), expected)
    kos20 = next(s for s in doc["samples"] if s["id"] == "kos20/Part4")
    raw_mask = Image.open(raw / "kos20" / "Part4_label.bmp")
    assert raw_mask.mode == "P"
    assert np.array_equal(decode_mask(kos20["mask"]), (np.asarray(raw_mask.convert("L")) > 0).astype(np.uint8))
    assert splits_by_folder(doc)["kos01"] in ({"train"}, {"val"}, {"test"})


def test_missing_mask_and_orphan_mask(tmp_path):
    rf.write_kolektorsdd(tmp_path)
    (tmp_path / "kos04" / "Part3_label.bmp").unlink()
    with pytest.raises(DatasetError, match="Part3_label.bmp: mask of Part3.jpg is missing") as err:
        parse_kolektorsdd(tmp_path)
    assert str(tmp_path / "kos04") in str(err.value)
    shutil.copyfile(tmp_path / "kos04" / "Part1_label.bmp", tmp_path / "kos04" / "Part3_label.bmp")
    (tmp_path / "kos06" / "Part7.jpg").unlink()
    with pytest.raises(DatasetError, match="kos06/Part7_label.bmp: mask without its image"):
        parse_kolektorsdd(tmp_path)


def test_layout_and_option_errors(tmp_path):
    rf.write_kolektorsdd(tmp_path / "archive" / "KolektorSDD")
    with pytest.raises(DatasetError, match=r"no kosNN folders found.*did you mean --raw .*KolektorSDD"):
        parse_kolektorsdd(tmp_path / "archive")
    good = tmp_path / "archive" / "KolektorSDD"
    with pytest.raises(DatasetError, match="--test-fold must be in 0..2"):
        parse_kolektorsdd(good, test_fold=3)
    with pytest.raises(DatasetError, match="fewer than --folds 20"):
        parse_kolektorsdd(good, folds=20)
    parsed = parse_kolektorsdd(good, folds=2, test_fold=1, seed=5)
    assert parsed.group_is_unit and {s.fold for s in parsed.samples} == {0, 1}
    assert all(s.declared_defective is None for s in parsed.samples)
