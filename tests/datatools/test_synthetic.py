"""The synthetic datatool: deterministic DAGM layout, learnable defects, end-to-end conversion."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from datatools.cli import main
from datatools.dagm.parser import parse_labels_txt
from datatools.errors import DatasetError
from datatools.synthetic.generator import SyntheticOptions, generate_dagm_layout, render

SMALL = {"classes": 3, "size": 48, "train_per_class": 10, "test_per_class": 6, "defect_rate": 0.4}


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_layout_is_dagm_full_release(tmp_path):
    raw = generate_dagm_layout(tmp_path / "raw", **SMALL, seed=3, workers=1)
    assert sorted(p.name for p in raw.iterdir() if p.is_dir()) == ["Class1", "Class2", "Class3"]
    labels = raw / "Class2" / "Train" / "Label" / "Labels.txt"
    data = labels.read_bytes()
    assert data.startswith(b"1\r\n") and data.endswith(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")
    rows = parse_labels_txt(labels)
    assert [r[1] for r in rows] == [f"{i:04d}.PNG" for i in range(7, 17)]  # Train ids follow Test ids
    ok_lines = [line for line in data.decode().split("\r\n")[1:] if line.split("\t")[1:2] == ["0"]]
    assert ok_lines and all(line.endswith("\t0\t0\t") for line in ok_lines)
    assert sum(r[2] for r in rows) == 4  # 0.4 * 10
    for folder, ids in (("Train", range(7, 17)), ("Test", range(1, 7))):
        for c in (1, 2, 3):
            split_dir = raw / f"Class{c}" / folder
            lines = (split_dir / "Label" / "Labels.txt").read_bytes().split(b"\r\n")
            assert lines[0] == b"1" and lines[-1] == b"" and len(lines) == len(ids) + 2
            masks = set()
            for ident, line in zip(ids, lines[1:-1], strict=True):
                n = f"{ident:04d}"
                defect = re.fullmatch(rf"{n}\t1\t{n}\.PNG\t0\t{n}_label\.PNG".encode(), line)
                assert defect or re.fullmatch(rf"{n}\t0\t{n}\.PNG\t0\t0\t".encode(), line), line
                if defect:
                    masks.add(f"{n}_label.PNG")
            # exactly the images of the rows, and a mask file for each defective row only
            assert {p.name for p in split_dir.iterdir() if p.is_file()} == {f"{i:04d}.PNG" for i in ids}
            assert {p.name for p in (split_dir / "Label").iterdir()} == masks | {"Labels.txt"}
    for _, image, defective, mask in rows:
        img = np.array(Image.open(labels.parent.parent / image))
        assert img.shape == (48, 48) and img.dtype == np.uint8
        if defective:
            m = np.array(Image.open(labels.parent / mask))
            assert set(np.unique(m)) == {0, 255}
            # the defect changes the pixels under its mask, and (almost) only those
            ident = int(image[:4])
            clean, _ = render(SyntheticOptions(**SMALL, seed=3), 2, "Train", ident, False)
            change = np.abs(img.astype(int) - clean.astype(int))
            assert change[m > 0].mean() > 20
            assert change[cv2.dilate(m, np.ones((5, 5), np.uint8)) == 0].max() == 0


def test_deterministic_whatever_the_workers(tmp_path):
    a = generate_dagm_layout(tmp_path / "a", **SMALL, seed=1, workers=1)
    b = generate_dagm_layout(tmp_path / "b", **SMALL, seed=1, workers=2)
    c = generate_dagm_layout(tmp_path / "c", **SMALL, seed=2, workers=2)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not an earlier synthetic output"):
        generate_dagm_layout(tmp_path / "raw", **SMALL)
    assert (tmp_path / "raw" / "precious.txt").read_text() == "keep me"
    generate_dagm_layout(tmp_path / "again", **SMALL)
    generate_dagm_layout(tmp_path / "again", **SMALL)  # an earlier synthetic output is replaced
    (tmp_path / "empty").mkdir()
    generate_dagm_layout(tmp_path / "empty", **SMALL)  # so is an empty folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "empty", "raw"]  # no leftovers


def test_replaces_a_folder_that_cannot_be_renamed(tmp_path, monkeypatch):
    """A Docker volume mount point as --raw: its content is replaced instead of the folder."""
    import datatools.synthetic.generator as generator

    raw = generate_dagm_layout(tmp_path / "raw", **SMALL, seed=1)
    expected = tree_digest(generate_dagm_layout(tmp_path / "ref", **SMALL, seed=2))
    real_rename = os.rename

    def rename(src, dst):
        if os.fspath(src) == os.fspath(raw):
            raise OSError(16, "Device or resource busy")
        real_rename(src, dst)

    monkeypatch.setattr(generator.os, "rename", rename)
    generate_dagm_layout(raw, **SMALL, seed=2)
    assert tree_digest(raw) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "ref"]


def test_defect_rate_is_respected_per_class_and_split(tmp_path):
    raw = generate_dagm_layout(tmp_path / "raw", classes=2, size=32, train_per_class=40, test_per_class=20,
                               defect_rate=0.25, seed=4)
    for labels in raw.glob("Class*/*/Label/Labels.txt"):
        rows = parse_labels_txt(labels)
        assert sum(r[2] for r in rows) == round(0.25 * len(rows))


def test_bad_options_exit_cleanly(tmp_path, capsys):
    assert main(["convert", "synthetic", "--out", str(tmp_path / "out"), "--defect-rate", "1.5"]) == 2
    assert "--defect-rate" in capsys.readouterr().err
    assert main(["convert", "synthetic", "--out", str(tmp_path / "out"), "--train-per-class", "9000",
                 "--test-per-class", "1000"]) == 2
    assert "9999" in capsys.readouterr().err
    assert not (tmp_path / "out" / "synthetic").exists() or not any(
        p for p in (tmp_path / "out" / "synthetic").iterdir() if not p.name.startswith("."))


def test_convert_end_to_end_is_versioned(tmp_path, capsys):
    args = ["convert", "synthetic", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "data"),
            "--classes", "2", "--size", "40", "--train-per-class", "10", "--test-per-class", "5"]
    assert main(args) == 0
    version_dir = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["validate", version_dir]) == 0
    doc = json.loads((tmp_path / "data" / "synthetic" / "latest" / "dataset.json").read_text())
    assert doc["name"] == "synthetic" and doc["source"]["options"]["gen_seed"] == 0
    assert {s["group"] for s in doc["samples"]} == {"Class1", "Class2"}
    assert doc["splits"]["test"] == {"images": 10, "defective": 4}
    assert doc["splits"]["train"]["images"] + doc["splits"]["val"]["images"] == 20
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == version_dir
    assert main([*args, "--gen-seed", "5"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] != version_dir


def test_temporary_raw_is_removed_and_version_ignores_where_raw_was(tmp_path):
    """Without --raw the images are generated in a temporary folder that is gone at exit."""
    small = ["--classes", "1", "--size", "32", "--train-per-class", "6", "--test-per-class", "4"]
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-m", "datatools.cli", "convert", "synthetic", "--out",
                           str(tmp_path / "a"), *small], env=env, capture_output=True, text=True, check=True)
    assert list((tmp_path / "tmp").iterdir()) == []
    kept = subprocess.run([sys.executable, "-m", "datatools.cli", "convert", "synthetic", "--out",
                           str(tmp_path / "b"), "--raw", str(tmp_path / "raw"), *small],
                          env=env, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1].rsplit("/", 1)[1] == kept.stdout.splitlines()[-1].rsplit("/", 1)[1]
    assert (tmp_path / "raw" / "Class1" / "Train" / "Label" / "Labels.txt").is_file()
