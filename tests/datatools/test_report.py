"""`datatool report`: one self-contained HTML file with the counts, histograms and overlays."""

from __future__ import annotations

import re

import numpy as np
import pytest

from datatools.cli import main
from datatools.errors import DatasetError
from datatools.report import histogram_svg, overlay, write_report
from datatools.synthetic.generator import generate_dagm_layout


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    raw = generate_dagm_layout(root / "raw", classes=2, size=48, train_per_class=12, test_per_class=6, seed=0)
    from datatools.convert import write_dataset
    from datatools.dagm.parser import parse_dagm

    return write_dataset(parse_dagm(raw), root / "data")


def test_report_is_self_contained_and_counts_right(dataset, capsys):
    assert main(["report", str(dataset), "--thumbnails", "8"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    text = open(path, encoding="utf-8").read()
    assert path.endswith("report.html")
    assert text.count('src="data:image/png;base64,') == 8
    assert "<svg" in text
    # no external assets: the only URL is the SVG namespace
    assert set(re.findall(r"https?://[^\"' )]+", text)) <= {"http://www.w3.org/2000/svg"}
    assert re.search(r"<td>train</td><td>\d+</td>", text)
    assert "<td>Class1</td>" in text and "<td>Class2</td>" in text
    assert "<td>48 x 48</td><td>36</td>" in text
    assert "defective" in text and ">OK<" in text


def test_report_custom_output_and_bad_dir(dataset, tmp_path):
    out = write_report(dataset, output=tmp_path / "r" / "x.html", thumbnails=2)
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))
    with pytest.raises(DatasetError, match="no such dataset directory"):
        write_report(tmp_path / "missing")


def test_overlay_marks_the_mask_red():
    image = np.full((40, 40), 128, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    thumb = overlay(image, mask)
    centre = thumb[thumb.shape[0] // 2, thumb.shape[1] // 2]
    corner = thumb[1, 1]
    assert centre[2] > centre[0] + 50 and corner[0] == corner[1] == corner[2] == 128


def test_histogram_handles_edge_cases():
    assert "no data" in histogram_svg([], "t", "px")
    svg = histogram_svg([5, 5, 5], "t", "px")
    assert svg.count("<rect") == 20
