"""Bad raw input through `datatool convert`: non-zero exit, a message naming the file, no version
directory and no staging leftovers under OUT; then the fixed input converts."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datatools.cli import main
from tests.datatools import rawfixtures as rf

VERSION_RE = re.compile(r"^[0-9a-f]{12}$")


def assert_fails(capsys, argv: list[str], out: Path, *names: str) -> str:
    """Run the CLI, expect failure; return stderr. `names` must all appear in the message."""
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc != 0
    assert captured.out.strip() == ""  # no version directory printed
    for name in names:
        assert name in captured.err, (name, captured.err)
    assert_nothing_written(out)
    return captured.err


def assert_nothing_written(out: Path) -> None:
    if not out.exists():
        return
    for entry in out.rglob("*"):
        assert not VERSION_RE.match(entry.name), entry
        assert not entry.name.startswith(".tmp-"), entry
        assert entry.name != "latest", entry


def assert_converts(capsys, argv: list[str]) -> Path:
    assert main(argv) == 0
    version = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert VERSION_RE.match(version.name) and (version / "dataset.json").is_file()
    assert not list(version.parent.glob(".tmp-*"))
    return version


def dagm_args(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", "dagm", "--raw", str(raw), "--out", str(out), "--workers", "2", *extra]


def test_missing_raw_folder(tmp_path, capsys):
    raw, out = tmp_path / "nowhere", tmp_path / "out"
    argv = ["convert", "kolektorsdd2", "--raw", str(raw), "--out", str(out)]
    assert_fails(capsys, argv, out, str(raw), "does not exist")
    rf.write_kolektorsdd2(raw)
    assert_converts(capsys, argv)


def test_wrong_raw_folder(tmp_path, capsys):
    rf.write_dagm_full(tmp_path / "downloads" / "DAGM", {1: (3, 3)})
    out = tmp_path / "out"
    err = assert_fails(capsys, dagm_args(tmp_path / "downloads", out), out,
                       str(tmp_path / "downloads"), "no ClassN folders", "expected")
    assert f"did you mean --raw {tmp_path / 'downloads' / 'DAGM'}" in err
    assert_fails(capsys, ["convert", "kolektorsdd", "--raw", str(tmp_path / "downloads" / "DAGM"),
                                "--out", str(out)], out, "no kosNN folders", "expected")
    assert_converts(capsys, dagm_args(tmp_path / "downloads" / "DAGM", out))


def test_image_that_does_not_decode(tmp_path, capsys):
    rf.write_dagm_full(tmp_path / "raw", {2: (4, 4)})
    bad = tmp_path / "raw" / "Class2" / "Test" / "0003.PNG"
    good_bytes = bad.read_bytes()
    bad.write_bytes(b"this is not a PNG at all")
    out = tmp_path / "out"
    assert_fails(capsys, dagm_args(tmp_path / "raw", out), out, str(bad), "does not decode")
    bad.write_bytes(good_bytes)
    assert_converts(capsys, dagm_args(tmp_path / "raw", out))


def test_truncated_png(tmp_path, capsys):
    rf.write_kolektorsdd2(tmp_path / "raw")
    bad = tmp_path / "raw" / "train" / "10298.png"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])
    out = tmp_path / "out"
    argv = ["convert", "kolektorsdd2", "--raw", str(tmp_path / "raw"), "--out", str(out), "--workers", "2"]
    assert_fails(capsys, argv, out, str(bad), "does not decode")
    bad.write_bytes(good_bytes)
    assert_converts(capsys, argv)


def test_mask_size_differs_from_image(tmp_path, capsys):
    rf.write_kolektorsdd(tmp_path / "raw")
    mask = tmp_path / "raw" / "kos05" / "Part1_label.bmp"
    original = mask.read_bytes()
    rf.save_palettised_bmp(mask, np.zeros((10, 12), np.uint8), [0, 0, 0, 255, 255, 255])
    out = tmp_path / "out"
    argv = ["convert", "kolektorsdd", "--raw", str(tmp_path / "raw"), "--out", str(out)]
    assert_fails(capsys, argv, out, str(mask), "mask is 12x10 (WxH) but its image is")
    mask.write_bytes(original)
    assert_converts(capsys, argv)


def test_labels_row_for_missing_file(tmp_path, capsys):
    rf.write_dagm_full(tmp_path / "raw", {1: (4, 3)})
    out = tmp_path / "out"
    labels = tmp_path / "raw" / "Class1" / "Train" / "Label" / "Labels.txt"
    image = tmp_path / "raw" / "Class1" / "Train" / "0578.PNG"
    mask = tmp_path / "raw" / "Class1" / "Train" / "Label" / "0577_label.PNG"
    for missing in (image, mask):
        kept = tmp_path / "kept"
        shutil.move(missing, kept)
        assert_fails(capsys, dagm_args(tmp_path / "raw", out), out, str(missing), str(labels), "does not exist")
        shutil.move(kept, missing)
    assert_converts(capsys, dagm_args(tmp_path / "raw", out))


def test_empty_dataset(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir()
    argv = ["convert", "kolektorsdd2", "--raw", str(raw), "--out", str(out)]
    assert_fails(capsys, argv, out, str(raw), "no images found")
    shutil.rmtree(raw)
    rf.write_kolektorsdd2(raw)
    assert_converts(capsys, argv)


def test_output_root_under_a_regular_file(tmp_path, capsys):
    rf.write_kolektorsdd2(tmp_path / "raw")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    argv = ["convert", "kolektorsdd2", "--raw", str(tmp_path / "raw"), "--out", str(out)]
    assert_fails(capsys, argv, out, str(out), "cannot be created")
    assert blocker.read_text() == "not a folder"
    assert_converts(capsys, ["convert", "kolektorsdd2", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])


def test_output_root_not_writable(tmp_path, capsys):
    rf.write_kolektorsdd2(tmp_path / "raw")
    out = tmp_path / "readonly"
    (out / "kolektorsdd2").mkdir(parents=True)
    os.chmod(out / "kolektorsdd2", 0o555)
    try:
        if os.access(out / "kolektorsdd2", os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        argv = ["convert", "kolektorsdd2", "--raw", str(tmp_path / "raw"), "--out", str(out)]
        assert_fails(capsys, argv, out, str(out / "kolektorsdd2"), "not writable")
        os.chmod(out / "kolektorsdd2", 0o755)
        assert_converts(capsys, argv)
    finally:
        os.chmod(out / "kolektorsdd2", 0o755)


def test_declared_defective_with_empty_mask(tmp_path, capsys):
    rf.write_dagm_full(tmp_path / "raw", {1: (4, 3)})
    mask = tmp_path / "raw" / "Class1" / "Test" / "Label" / "0002_label.PNG"
    original = mask.read_bytes()
    Image.fromarray(np.zeros(rf.SIZE, np.uint8)).save(mask)
    out = tmp_path / "out"
    assert_fails(capsys, dagm_args(tmp_path / "raw", out), out, str(mask), "labelled defective but its mask has no defect pixel")
    mask.write_bytes(original)
    assert_converts(capsys, dagm_args(tmp_path / "raw", out))


def test_declared_ok_row_naming_a_mask(tmp_path, capsys):
    rf.write_dagm_full(tmp_path / "raw", {1: (4, 3)})
    labels = tmp_path / "raw" / "Class1" / "Train" / "Label" / "Labels.txt"
    original = labels.read_bytes()
    labels.write_bytes(original.replace(b"0576\t0\t0576.PNG\t0\t0\t", b"0576\t0\t0576.PNG\t0\t0576_label.PNG"))
    out = tmp_path / "out"
    assert_fails(capsys, dagm_args(tmp_path / "raw", out), out, str(labels), "line 2", "label 0 but a mask file")
    labels.write_bytes(original)
    assert_converts(capsys, dagm_args(tmp_path / "raw", out))
