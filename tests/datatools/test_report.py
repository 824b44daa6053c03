"""`datatool report`: one self-contained HTML file with the counts, histograms and overlays."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from datatools.cli import main
from datatools.errors import DatasetError
from datatools.report import histogram_svg, overlay, pick_thumbnails, write_report


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    assert main(["convert", "synthetic", "--raw", str(root / "raw"), "--out", str(root / "data"), "--classes", "2",
                 "--size", "48", "--train-per-class", "12", "--test-per-class", "6", "--workers", "1"]) == 0
    return (root / "data" / "synthetic" / "latest").resolve()


def test_report_is_self_contained_and_counts_right(dataset, capsys):
    assert main(["report", str(dataset), "--thumbnails", "8"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    text = open(path, encoding="utf-8").read()
    doc = json.loads((dataset / "dataset.json").read_text())
    assert path.endswith("report.html")
    assert text.count('src="data:image/png;base64,') == 8
    assert text.count("<svg") == 2
    # no external assets (no src/href/url()/@import to anything but inline data), and the only
    # URL at all is the SVG namespace (the synthetic set has no source url)
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:)""", text)
    assert "url(" not in text and "@import" not in text
    assert set(re.findall(r"https?://[^\"' )<]+", text)) <= {"http://www.w3.org/2000/svg"}
    assert doc["name"] in text and doc["version"] in text and doc["license"] in text
    for split, c in doc["splits"].items():
        assert f"<td>{split}</td><td>{c['images']}</td><td>{c['defective']}</td><td>{c['images'] - c['defective']}</td>" in text
    n_def = sum(s["defective"] for s in doc["samples"])
    assert f"<td>all</td><td>36</td><td>{n_def}</td><td>{36 - n_def}</td>" in text
    for group in ("Class1", "Class2"):
        cells = [sum(1 for s in doc["samples"] if s["group"] == group and s["split"] == sp and s["defective"] == d)
                 for sp in ("train", "val", "test") for d in (True, False)]
        assert f"<td>{group}</td>" + "".join(f"<td>{c}</td>" for c in cells) in text
    assert "<td>48 x 48</td><td>36</td>" in text
    assert f"<td>pixels</td><td>{n_def}</td>" in text  # defect-area statistics cover every defective image
    captions = re.findall(r"<figcaption[^>]*>([^<]+)<br>(\w+) · <span class=\"(def|ok)\">", text)
    assert len(captions) == 8 and {c[2] for c in captions} == {"def", "ok"}
    by_id = {s["id"]: s for s in doc["samples"]}
    for sid, split, kind in captions:
        assert by_id[sid]["split"] == split and by_id[sid]["defective"] == (kind == "def")


def test_thumbnail_pick_is_deterministic_mixed_and_spread(dataset):
    samples = json.loads((dataset / "dataset.json").read_text())["samples"]
    picked = pick_thumbnails(samples, 12)
    assert [s["id"] for s in picked] == [s["id"] for s in pick_thumbnails(list(reversed(samples)), 12)]
    assert len({s["id"] for s in picked}) == 12
    assert sum(s["defective"] for s in picked) == 6
    assert {s["group"] for s in picked} == {"Class1", "Class2"}
    assert {s["split"] for s in picked} == {"train", "val", "test"}
    assert len(pick_thumbnails(samples, 1000)) == len(samples)
    ok_only = [s for s in samples if not s["defective"]]
    assert len(pick_thumbnails(ok_only, 5)) == 5


def test_report_custom_output_and_bad_dir(dataset, tmp_path):
    out = write_report(dataset, output=tmp_path / "r" / "x.html", thumbnails=2)
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))
    with pytest.raises(DatasetError, match="no such dataset directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a dataset version directory"):
        write_report(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="cannot be written"):
        write_report(dataset, output=tmp_path / "file" / "r.html")


def test_overlay_marks_the_mask_red():
    image = np.full((40, 40), 128, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    thumb = overlay(image, mask)
    centre = thumb[thumb.shape[0] // 2, thumb.shape[1] // 2]
    corner = thumb[1, 1]
    assert centre[2] > centre[0] + 50 and corner[0] == corner[1] == corner[2] == 128


def test_overlay_keeps_thin_defects_when_shrinking():
    image = np.full((1280, 500), 128, np.uint8)  # KolektorSDD-like: shrunk 8x
    mask = np.zeros_like(image)
    mask[600:602, 100:400] = 1  # a 2-pixel crack
    thumb = overlay(image, mask)
    assert thumb.shape[:2] == (160, 62)
    assert (thumb[..., 2].astype(int) - thumb[..., 0] > 50).any()


def test_histogram_handles_edge_cases():
    assert "no data" in histogram_svg([], "t", "px")
    svg = histogram_svg([5, 5, 5], "t", "px")
    assert svg.count("<rect") == 20
