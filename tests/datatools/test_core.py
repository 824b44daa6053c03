"""The shared pipeline, store and validation, on a tiny in-memory dataset (no parser involved)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datatools.cli import main
from datatools.convert import write_dataset
from datatools.errors import DatasetError
from datatools.masks import decode_mask
from datatools.records import ParsedDataset, RawSample
from datatools.splits import assign_folds, carve
from datatools.store import list_store, tag_version
from datatools.validate import validate_dataset


def make_parsed(raw: Path, n: int = 12, group_is_unit: bool = False, groups: int = 2) -> ParsedDataset:
    rng = np.random.default_rng(0)
    raw.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        img = rng.integers(0, 255, (20, 24), dtype=np.uint8)
        Image.fromarray(img).save(raw / f"{i}.png")
        mask_path = None
        if i % 3 == 0:
            mask = np.zeros((20, 24), np.uint8)
            mask[5:9, 3 + i % 5 : 10] = 255
            Image.fromarray(mask).save(raw / f"{i}_m.png")
            mask_path = raw / f"{i}_m.png"
        samples.append(RawSample(id=f"g{i % groups}/{i:03d}", image=raw / f"{i}.png", group=f"g{i % groups}",
                                 split="test" if i >= n - 3 else "train", mask=mask_path))
    return ParsedDataset(name="tiny", source={"dataset": "tiny", "options": {}}, license="test",
                         samples=samples, group_is_unit=group_is_unit)


def test_version_is_content_hash_and_deterministic(tmp_path):
    parsed = make_parsed(tmp_path / "raw")
    a = write_dataset(parsed, tmp_path / "out", workers=2)
    json_a = (a / "dataset.json").read_bytes()
    b = write_dataset(parsed, tmp_path / "out2", workers=1)
    assert a.name == b.name and json_a == (b / "dataset.json").read_bytes()
    c = write_dataset(parsed, tmp_path / "out", val_fraction=0.4)
    assert c.name != a.name
    assert os.readlink(tmp_path / "out" / "tiny" / "latest") == c.name
    # one changed pixel gives a new version
    img = np.array(Image.open(tmp_path / "raw" / "0.png"))
    img[0, 0] ^= 1
    Image.fromarray(img).save(tmp_path / "raw" / "0.png")
    d = write_dataset(parsed, tmp_path / "out")
    assert d.name not in (a.name, c.name)


def test_pixels_and_masks_exact(tmp_path):
    parsed = make_parsed(tmp_path / "raw")
    version = write_dataset(parsed, tmp_path / "out")
    doc = json.loads((version / "dataset.json").read_text())
    assert doc["schema"] == "defect-dataset/1"
    for s in doc["samples"]:
        raw_id = int(s["id"].split("/")[1])
        stored = np.array(Image.open(version / s["image"]))
        assert np.array_equal(stored, np.array(Image.open(tmp_path / "raw" / f"{raw_id}.png")))
        mask = decode_mask(s["mask"])
        expected = np.zeros((20, 24), np.uint8)
        if raw_id % 3 == 0:
            expected = (np.array(Image.open(tmp_path / "raw" / f"{raw_id}_m.png")) > 0).astype(np.uint8)
        assert np.array_equal(mask, expected)
        assert s["defective"] == bool(expected.any())
    assert validate_dataset(version) == []


def test_validate_finds_tampering(tmp_path):
    version = write_dataset(make_parsed(tmp_path / "raw"), tmp_path / "out")
    doc = json.loads((version / "dataset.json").read_text())
    (version / doc["samples"][0]["image"]).unlink()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(version / doc["samples"][1]["image"])
    doc["samples"][2]["defective"] = not doc["samples"][2]["defective"]
    (version / "dataset.json").write_text(json.dumps(doc))
    problems = "\n".join(validate_dataset(version))
    assert "is missing" in problems
    assert "5x5" in problems
    assert "disagrees with its mask" in problems
    assert "counts" in problems


def test_validate_schema_error(tmp_path, capsys):
    version = write_dataset(make_parsed(tmp_path / "raw"), tmp_path / "out")
    doc = json.loads((version / "dataset.json").read_text())
    doc["samples"][0]["split"] = "holdout"
    (version / "dataset.json").write_text(json.dumps(doc))
    assert main(["validate", str(version)]) == 2
    assert "schema error" in capsys.readouterr().err


def test_failed_conversion_leaves_nothing(tmp_path):
    parsed = make_parsed(tmp_path / "raw")
    (tmp_path / "raw" / "4.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="4.png: image does not decode"):
        write_dataset(parsed, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out" / "tiny").iterdir()] == []


def test_tags_and_list(tmp_path, capsys):
    version = write_dataset(make_parsed(tmp_path / "raw"), tmp_path / "out")
    link = tag_version(version, "paper-2022")
    assert link.resolve() == version
    assert validate_dataset(link) == []
    rows = list_store(tmp_path / "out")
    assert [(r.name, r.version, r.tags) for r in rows] == [("tiny", version.name, ["latest", "paper-2022"])]
    assert main(["list", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert version.name in out and "paper-2022" in out
    with pytest.raises(DatasetError, match="invalid tag"):
        tag_version(version, "latest")
    assert main(["tag", str(tmp_path / "nope"), "x"]) == 2


def test_val_carving_stratified_by_group_and_label(tmp_path):
    items = [{"id": f"{g}/{i}", "group": g, "defective": i % 4 == 0} for g in "abc" for i in range(40)]
    val = carve(items, 0.25, seed=1, group_is_unit=False, salt="val")
    assert val == carve(items, 0.25, seed=1, group_is_unit=False, salt="val")
    assert val != carve(items, 0.25, seed=2, group_is_unit=False, salt="val")
    for g in "abc":
        for d in (True, False):
            stratum = [x for x in items if x["group"] == g and x["defective"] == d]
            picked = [x for x in stratum if x["id"] in val]
            assert len(picked) == round(0.25 * len(stratum))


def test_group_units_never_split():
    items = [{"id": f"k{g:02d}/{i}", "group": f"k{g:02d}", "defective": g % 5 == 0 and i == 1}
             for g in range(20) for i in range(6)]
    val = carve(items, 0.3, seed=0, group_is_unit=True, salt="val")
    for g in {x["group"] for x in items}:
        flags = {x["id"] in val for x in items if x["group"] == g}
        assert len(flags) == 1
    assert any(x["defective"] for x in items if x["id"] in val)
    folds = assign_folds({f"k{g:02d}": g % 5 == 0 for g in range(20)}, 3, seed=0)
    defective_per_fold = [sum(1 for g, f in folds.items() if f == k and int(g[1:]) % 5 == 0) for k in range(3)]
    assert max(defective_per_fold) - min(defective_per_fold) <= 1
