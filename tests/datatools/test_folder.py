"""`datatool convert folder`: your own images in good/ and defective/, masks optional (issue 26).

Layouts (default and named folders, nested, masks matched in each accepted place), image-level labels for
defective images without a mask, groups kept whole across splits, determinism, and bad input: a clear error
naming the file, exit code 2, nothing written; then the fixed input converts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datatools.cli import main
from datatools.masks import decode_mask
from datatools.validate import validate_dataset
from tests.datatools.test_bad_input import assert_converts, assert_fails

SIZE = 24


def _image(path: Path, seed: int, size=(SIZE, SIZE), defect: bool = False) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 120, size=size, dtype=np.uint8)
    if defect:
        img[4:9, 5:11] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _mask(path: Path, size=(SIZE, SIZE), defect: bool = True, value: int = 255) -> None:
    m = np.zeros(size, np.uint8)
    if defect:
        m[4:9, 5:11] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)


def make_parts(raw: Path, parts: int = 8, masked: int | None = None, suffix: str = "_mask", mask_dir: str = "masks",
               good: str = "good", defective: str = "defective") -> Path:
    """Each part pN photographed twice: pN_cam1 good, pN_cam2 defective; the first `masked` defective images get
    a mask (all of them when None)."""
    masked = parts if masked is None else masked
    for i in range(parts):
        _image(raw / good / f"p{i}_cam1.png", i)
        _image(raw / defective / f"p{i}_cam2.png", 100 + i, defect=True)
        if i < masked:
            _mask(raw / mask_dir / f"p{i}_cam2{suffix}.png")
    return raw


def convert(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", "folder", "--raw", str(raw), "--out", str(out), "--workers", "1", *extra]


def load(version: Path) -> dict:
    return json.loads((version / "dataset.json").read_text())


def test_masks_matched_and_image_level_labels_kept(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=8, masked=3)
    version = assert_converts(capsys, convert(raw, tmp_path / "out", "--masks", "masks", "--mask-suffix", "_mask"))
    assert validate_dataset(version) == []
    doc = load(version)
    by_id = {s["id"]: s for s in doc["samples"]}
    assert len(by_id) == 16 and sum(s["defective"] for s in by_id.values()) == 8  # nothing dropped
    for i in range(8):
        good, bad = by_id[f"good/p{i}_cam1"], by_id[f"defective/p{i}_cam2"]
        assert not good["defective"] and "mask_labelled" not in good and not decode_mask(good["mask"]).any()
        assert bad["defective"]
        if i < 3:  # its mask, as drawn
            assert "mask_labelled" not in bad
            assert decode_mask(bad["mask"])[4:9, 5:11].all() and decode_mask(bad["mask"]).sum() == 30
        else:  # image-level: defective, stored mask empty and flagged
            assert bad["mask_labelled"] is False and not decode_mask(bad["mask"]).any()
    assert doc["source"]["converter"] == "folder"
    assert doc["source"]["options"]["masks"] == "masks" and doc["source"]["options"]["mask_suffix"] == "_mask"
    assert str(tmp_path) not in json.dumps(doc)  # no machine paths: the version depends on content only
    # stratified by label, masked and image-level defective images spread separately: every split has both
    for split in ("train", "val", "test"):
        kinds = {(s["defective"], s.get("mask_labelled", True)) for s in doc["samples"] if s["split"] == split}
        assert (False, True) in kinds and (True, True) in kinds, (split, kinds)
    # the same input gives the same version, byte for byte
    again = assert_converts(capsys, convert(raw, tmp_path / "out", "--masks", "masks", "--mask-suffix", "_mask"))
    assert again == version


def test_no_masks_at_all_every_defective_image_is_image_level(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=4, masked=0)
    version = assert_converts(capsys, convert(raw, tmp_path / "out"))
    doc = load(version)
    bad = [s for s in doc["samples"] if s["defective"]]
    assert len(bad) == 4 and all(s["mask_labelled"] is False for s in bad)
    assert doc["splits"]["train"]["defective"] + doc["splits"]["val"]["defective"] + \
        doc["splits"]["test"]["defective"] == 4


def test_named_folders_nested_and_mask_places(tmp_path, capsys):
    raw = tmp_path / "raw"
    _image(raw / "OK" / "line1" / "a.png", 1)
    _image(raw / "OK" / "line2" / "a.png", 2)  # same file name in another subfolder: its own sample
    _image(raw / "OK" / "b.bmp", 3)
    _image(raw / "NG" / "line1" / "c.png", 4, defect=True)  # mask mirrored under the class folder's name
    _image(raw / "NG" / "d.png", 5, defect=True)  # mask flat, by file name
    _image(raw / "NG" / "line2" / "e.png", 6, defect=True)  # mask at its relative path
    _image(raw / "NG" / "f.png", 7, defect=True)  # no mask
    _mask(raw / "labels" / "NG" / "line1" / "c_label.bmp", value=1)  # palette-free 0/1 BMP: any non-zero
    _mask(raw / "labels" / "d_label.png")
    _mask(raw / "labels" / "line2" / "e_label.png")
    _mask(raw / "labels" / "OK" / "b_label.png", defect=False)  # an OK image's empty mask is fine
    (raw / "OK" / "notes.txt").write_text("not an image")
    (raw / "OK" / ".DS_Store").write_bytes(b"\0")
    version = assert_converts(capsys, convert(raw, tmp_path / "out", "--good", "OK", "--defective", "NG", "--masks",
                                              "labels", "--mask-suffix", "_label", "--name", "myparts",
                                              "--test-fraction", "0", "--val-fraction", "0"))
    assert version.parent.name == "myparts"
    by_id = {s["id"]: s for s in load(version)["samples"]}
    assert set(by_id) == {"good/line1/a", "good/line2/a", "good/b", "defective/line1/c", "defective/d",
                          "defective/line2/e", "defective/f"}
    assert by_id["good/b"]["image"] == "images/good/b.bmp"
    for sid in ("defective/line1/c", "defective/d", "defective/line2/e"):
        assert "mask_labelled" not in by_id[sid] and decode_mask(by_id[sid]["mask"]).sum() == 30, sid
    assert by_id["defective/f"]["mask_labelled"] is False
    assert validate_dataset(version) == []


def test_groups_never_straddle_splits(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=12, masked=12)
    version = assert_converts(capsys, convert(raw, tmp_path / "out", "--masks", "masks", "--mask-suffix", "_mask",
                                              "--group-regex", r"^(?P<group>p\d+)_cam"))
    doc = load(version)
    split_of: dict[str, set] = {}
    for s in doc["samples"]:
        split_of.setdefault(s["group"], set()).add(s["split"])
    assert len(split_of) == 12 and all(len(v) == 1 for v in split_of.values()), split_of
    assert {next(iter(v)) for v in split_of.values()} == {"train", "val", "test"}
    assert doc["source"]["options"]["group_regex"] == r"^(?P<group>p\d+)_cam"


def test_without_groups_images_are_independent(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=12)
    doc = load(assert_converts(capsys, convert(raw, tmp_path / "out", "--masks", "masks", "--mask-suffix", "_mask")))
    assert {s["group"] for s in doc["samples"]} == {"good", "defective"}
    # the two images of one part may land in different splits: stratified by label only
    for label in (True, False):
        assert {s["split"] for s in doc["samples"] if s["defective"] == label} == {"train", "val", "test"}


# ----------------------------------------------------------------------------- bad input
def test_mask_of_another_size(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3)
    bad = raw / "masks" / "p1_cam2_mask.png"
    _mask(bad, size=(SIZE, SIZE + 5))
    out = tmp_path / "out"
    argv = convert(raw, out, "--masks", "masks", "--mask-suffix", "_mask")
    assert_fails(capsys, argv, out, str(bad), "but its image is")
    _mask(bad)
    assert_converts(capsys, argv)


def test_image_that_does_not_decode(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3)
    broken = raw / "good" / "p1_cam1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    out = tmp_path / "out"
    argv = convert(raw, out, "--masks", "masks", "--mask-suffix", "_mask")
    assert_fails(capsys, argv, out, str(broken), "does not decode")
    _image(broken, 1)
    assert_converts(capsys, argv)


def test_mask_without_an_image(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3)
    orphan = raw / "masks" / "p9_cam2_mask.png"
    _mask(orphan)
    out = tmp_path / "out"
    argv = convert(raw, out, "--masks", "masks", "--mask-suffix", "_mask")
    assert_fails(capsys, argv, out, str(orphan), "mask without an image")
    orphan.unlink()
    assert_converts(capsys, argv)


def test_wrong_mask_suffix_is_reported_not_ignored(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3)
    out = tmp_path / "out"
    # without --mask-suffix no mask matches: every mask is an orphan, named with the hint
    err = assert_fails(capsys, convert(raw, out, "--masks", "masks"), out, "mask without an image", "--mask-suffix")
    assert "p0_cam2_mask.png" in err


@pytest.mark.parametrize("which", ["good", "defective"])
def test_empty_class_folder(tmp_path, capsys, which):
    raw = make_parts(tmp_path / "raw", parts=3, masked=0)
    folder = raw / which
    for f in folder.iterdir():
        f.unlink()
    (folder / "readme.txt").write_text("no images here")
    out = tmp_path / "out"
    assert_fails(capsys, convert(raw, out), out, str(folder), "holds no images")


def test_missing_class_folder_says_the_layout(tmp_path, capsys):
    raw = tmp_path / "raw"
    _image(raw / "ok" / "a.png", 1)
    out = tmp_path / "out"
    assert_fails(capsys, convert(raw, out), out, str(raw / "good"), "does not exist", "--good")


def test_defective_image_with_an_empty_mask(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3)
    empty = raw / "masks" / "p2_cam2_mask.png"
    _mask(empty, defect=False)
    out = tmp_path / "out"
    assert_fails(capsys, convert(raw, out, "--masks", "masks", "--mask-suffix", "_mask"), out, str(empty),
                 "labelled defective but its mask has no defect pixel")


def test_good_image_whose_mask_marks_defects(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3)
    wrong = raw / "masks" / "p0_cam1_mask.png"
    _mask(wrong)
    out = tmp_path / "out"
    assert_fails(capsys, convert(raw, out, "--masks", "masks", "--mask-suffix", "_mask"), out, str(wrong),
                 "labelled OK but its mask marks defect pixels")


def test_ambiguous_and_lossy_masks(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3)
    out = tmp_path / "out"
    argv = convert(raw, out, "--masks", "masks", "--mask-suffix", "_mask")
    twin = raw / "masks" / "p0_cam2_mask.bmp"
    _mask(twin)
    assert_fails(capsys, argv, out, "two masks for one image", "p0_cam2_mask.png", "p0_cam2_mask.bmp")
    twin.unlink()
    lossy = raw / "masks" / "p1_cam2_mask.jpg"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(lossy)
    assert_fails(capsys, argv, out, str(lossy), "JPEG")
    lossy.unlink()
    # one flat mask matching a good and a defective image of the same name
    _image(raw / "good" / "same.png", 50)
    _image(raw / "defective" / "same.png", 51, defect=True)
    _mask(raw / "masks" / "same_mask.png")
    assert_fails(capsys, argv, out, "matches two images", str(raw / "masks" / "same_mask.png"))


def test_group_regex_that_does_not_match_or_compile(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3, masked=0)
    _image(raw / "good" / "stray.png", 77)
    out = tmp_path / "out"
    assert_fails(capsys, convert(raw, out, "--group-regex", r"^(p\d+)_"), out, str(raw / "good" / "stray.png"),
                 "does not match")
    assert_fails(capsys, convert(raw, out, "--group-regex", "(unclosed"), out, "not a valid regular expression")


def test_failed_conversion_leaves_earlier_versions_alone(tmp_path, capsys):
    raw = make_parts(tmp_path / "raw", parts=3)
    out = tmp_path / "out"
    argv = convert(raw, out, "--masks", "masks", "--mask-suffix", "_mask")
    first = assert_converts(capsys, argv)
    broken = raw / "defective" / "p2_cam2.png"
    broken.write_bytes(b"not a png")
    assert main(argv) == 2
    assert str(broken) in capsys.readouterr().err
    assert sorted(p.name for p in (out / "folder").iterdir()) == sorted([first.name, "latest"])
    assert (out / "folder" / "latest").resolve() == first.resolve()


def test_validate_and_report_know_image_level_labels(tmp_path, capsys):
    from datatools.errors import DatasetError
    from datatools.masks import encode_mask
    from datatools.report import write_report
    from datatools.validate import load_dataset

    raw = make_parts(tmp_path / "raw", parts=4, masked=2)
    version = assert_converts(capsys, convert(raw, tmp_path / "out", "--masks", "masks", "--mask-suffix", "_mask"))
    html = write_report(version, progress=False).read_text()
    assert "defective without mask" in html and "(no mask)" in html
    doc = load(version)
    sample = next(s for s in doc["samples"] if s.get("mask_labelled") is False)
    # an image-level label whose stored mask marks pixels: a problem, named
    sample["mask"] = encode_mask(np.ones((SIZE, SIZE), np.uint8))
    (version / "dataset.json").write_text(json.dumps(doc))
    assert any("mask_labelled is false but its stored mask" in p for p in validate_dataset(version))
    # an OK image cannot be "without a mask": the schema refuses it
    sample["mask"] = encode_mask(np.zeros((SIZE, SIZE), np.uint8))
    sample["defective"] = False
    (version / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="schema error"):
        load_dataset(version)
