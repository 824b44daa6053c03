"""The export registry: one verification for every format (asset.export.verify), and a format that is one module and
one row (a fake format registered here reaches `asset export`, export_model and the backends' messages)."""

from __future__ import annotations

import numpy as np
import pytest

from asset.export import ExportError
from tests.asset.helpers import make_dataset


# ----------------------------------------------------------------------------- verify.compare
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(algorithm, dataset inputs, random inputs) of a tiny dataset, no torch: compare() needs none."""
    from asset import scoring
    from asset.algorithm import Algorithm, SizePolicy, load_image, load_mask

    ds = make_dataset(tmp_path_factory.mktemp("ds"), n_train=4, n_test=8)
    card = {"dataset": {"path": str(ds)}}
    split, items = scoring.first_split(card)
    algorithm = Algorithm(1, SizePolicy("pad", 32, None), [0.5], [0.25], 0.5, 0.01)
    images = [load_image(i.path) for i in items]
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, size=(32, 32), dtype=np.uint8) for _ in range(4)]
    return algorithm, (split, items, images, [load_mask(i.rle) for i in items]), (None, [], noise, None)


def bright(x: np.ndarray) -> np.ndarray:
    """A stand-in network that finds the fixture's defects: positive logits on its bright squares (value 230, 1.6
    once normalised) only, the noise being 60..120 (-0.12 at most)."""
    return ((x[:, :1] - 0.8) * 4).astype(np.float32)


def _compare(algorithm, inputs, infer, **kw):
    from asset.export.verify import compare

    args = {"exact": True, "atol": 1e-3, "max_drop": 0.02, "what": "fake", "reference_name": "the reference",
            "log": lambda m: None, **kw}
    return compare(infer, bright, algorithm, inputs, **args)


def test_compare_exact_passes_identical_logits_and_records_the_figures(labelled):
    algorithm, data, _ = labelled
    said = []
    f = _compare(algorithm, data, bright, log=said.append)
    n = len(data[2])
    assert f["passed"] and f["max_abs_diff"] == 0 and f["decisions_equal"] == f["images"] == n
    assert f["reference"] == "the reference" and f["split"] == data[0] == "val"
    assert f["inputs"] == f"{n} val images" and f["mask_agreement"] == 1.0
    assert f["accuracy"] == {"reference": 1.0, "export": 1.0} and f["pixel_iou"]["export"] == 1.0
    assert f["accuracy_change"] == f["pixel_iou_change"] == 0
    assert f["tolerance"] == pytest.approx(1e-3 * f["max_abs_logit"]) and f["max_abs_logit"] >= 1
    assert said and said[0].startswith("fake: max |logit diff| 0")


def test_compare_exact_refuses_a_logit_difference_beyond_the_tolerance(labelled):
    algorithm, data, _ = labelled
    shifted = lambda x: bright(x) + 0.01 * np.abs(bright(x)).max()  # noqa: E731 - decisions may well survive
    with pytest.raises(ExportError, match=r"fake failed verification against the reference: max \|logit diff\| "
                                          r".*needs max diff <= 0.001 x max\(1, \|logit\|\).*Nothing was written"):
        _compare(algorithm, data, shifted)
    assert _compare(algorithm, data, shifted, atol=0.02)["passed"]


def test_compare_reduced_precision_gates_accuracy_and_iou(labelled):
    algorithm, data, _ = labelled
    negated = lambda x: -bright(x)  # noqa: E731 - every mask inverted
    f = _compare(algorithm, data, negated, exact=False, max_drop=1.0)
    assert f["passed"] and f["tolerance"] is None and f["pixel_iou_change"] < -0.9
    with pytest.raises(ExportError, match=r"accuracy .* -> .*pixel IoU .* -> .*needs accuracy and pixel IoU to drop "
                                          r"by <= 0.02"):
        _compare(algorithm, data, negated, exact=False)
    with pytest.raises(ExportError, match="and identical decisions"):
        _compare(algorithm, data, negated, exact=False, max_drop=1.0, same_decisions=True)


def test_compare_without_labels_gates_mask_agreement(labelled):
    algorithm, _, noise = labelled
    f = _compare(algorithm, noise, bright, exact=False)
    assert f["passed"] and f["split"] is None and f["inputs"] == "4 random images (no dataset here)"
    assert "accuracy_change" not in f and "accuracy" not in f
    with pytest.raises(ExportError, match=r"needs >= 98.00% equal mask pixels \(no labelled images here\)"):
        _compare(algorithm, noise, lambda x: -bright(x), exact=False)


def test_compare_an_export_that_fails_to_run(labelled):
    algorithm, data, _ = labelled

    def broken(x):
        raise RuntimeError("bad graph\nwith a long trace")

    with pytest.raises(ExportError, match=r"^fake: the exported model fails to run \(bad graph\); nothing was written$"):
        _compare(algorithm, data, broken)
    with pytest.raises(ExportError, match=r"returns logits of shape \(1, 16, 16\) where the reference returns"):
        _compare(algorithm, data, lambda x: bright(x)[:, :, ::2, ::2])
