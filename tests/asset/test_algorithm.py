"""The shared pre/post-processing: size policies, channels, decisions, calibration (numpy only)."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from asset.algorithm import Algorithm, AlgorithmError, SizePolicy, calibrate_image_threshold, shrink_mask


def algo(channels=1, mode="pad", divisor=32, size=None, image_threshold=0.1):
    return Algorithm(channels, SizePolicy(mode, divisor, size), [0.5] * channels, [0.25] * channels, 0.5,
                     image_threshold)


def test_no_torch_import():
    code = "import sys, asset.algorithm, asset.modeldir, asset.cli; asset.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_pad_policy_round_trip():
    a = algo(image_threshold=0.05)
    img = np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)
    x, metas = a.preprocess([img])
    assert x.shape == (1, 1, 64, 96) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, :50, :70], (img / 255 - 0.5) / 0.25, atol=1e-5)
    # logits: +10 on a square inside, -10 elsewhere, garbage in the padding
    logits = np.full((1, 1, 64, 96), -10.0, np.float32)
    logits[0, 0, 10:20, 10:30] = 10.0
    logits[0, 0, 50:, :] = 10.0
    (p,) = a.postprocess(logits, metas)
    assert p.mask.shape == (50, 70) and p.mask.sum() == 200
    assert p.defect_fraction == pytest.approx(200 / 3500)
    assert p.defective and p.threshold == 0.05
    (q,) = a.postprocess(logits, metas, image_threshold=0.5)
    assert not q.defective and q.threshold == 0.5


def test_resize_policy_maps_back():
    a = algo(mode="resize", size=(32, 32))
    img = np.zeros((64, 128), np.uint8)
    x, metas = a.preprocess([img])
    assert x.shape == (1, 1, 32, 32)
    logits = np.full((1, 1, 32, 32), -10.0, np.float32)
    logits[0, 0, :, :16] = 10.0
    (p,) = a.postprocess(logits, metas)
    assert p.mask.shape == (64, 128)
    assert abs(p.defect_fraction - 0.5) < 0.02
    gt = a.preprocess_mask(np.ones((64, 128), np.uint8), metas[0])
    assert gt.shape == (32, 32) and gt.all()


@pytest.mark.parametrize("column", range(198, 204))
def test_a_one_pixel_crack_survives_shrinking_as_a_continuous_line(column):
    """Nearest neighbour at 0.51x dropped every other column: half of the 1-px cracks vanished from the label."""
    mask = np.zeros((1250, 500), np.uint8)
    mask[:, column] = 1
    a = algo(mode="resize", size=(640, 256))
    _, metas = a.preprocess([np.zeros((1250, 500), np.uint8)])
    gt = a.preprocess_mask(mask, metas[0])
    assert gt.shape == (640, 256)
    assert gt.any(axis=1).all()  # every row keeps the crack
    assert gt.any(axis=0).sum() == 1  # one network pixel wide, not smeared


def test_shrink_mask_keeps_diagonal_cracks_connected_and_blob_areas():
    diagonal = np.zeros((1000, 500), np.uint8)
    for i in range(500):
        diagonal[2 * i:2 * i + 2, i] = 1
    small = shrink_mask(diagonal, (512, 256))
    assert small.any(axis=1).all()
    blob = np.zeros((1250, 500), np.uint8)
    blob[400:700, 100:300] = 1
    area = shrink_mask(blob, (625, 250)).sum()
    assert abs(area - blob.sum() / 4) <= 2 * (150 + 100)  # the majority rule: off by at most the border


def test_fixed_canvas_shrinks_large_images_and_pads_small_ones():
    a = algo(size=(64, 64))
    x, metas = a.preprocess([np.zeros((40, 50), np.uint8)])
    assert x.shape == (1, 1, 64, 64) and metas[0].content == (40, 50)
    x, metas = a.preprocess([np.zeros((128, 64), np.uint8)])
    assert metas[0].content == (64, 32)
    (p,) = a.postprocess(np.zeros((1, 1, 64, 64), np.float32), metas)
    assert p.mask.shape == (128, 64)


def test_channels_conversion():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255
    gray = algo(1).preprocess([rgb])[0]
    assert gray.shape == (1, 1, 32, 32)
    col = algo(3).preprocess([rgb[..., 0]])[0]
    assert col.shape == (1, 3, 32, 32) and np.allclose(col[0, 0], col[0, 2])


def test_batch_of_mixed_sizes_is_refused():
    with pytest.raises(AlgorithmError, match="one at a time"):
        algo().preprocess([np.zeros((32, 32), np.uint8), np.zeros((64, 64), np.uint8)])


def test_decode_png_and_garbage():
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 9), 7, np.uint8)).save(buf, format="PNG")
    img = Algorithm.decode(buf.getvalue())
    assert img.shape == (8, 9) and img.dtype == np.uint8
    with pytest.raises(AlgorithmError, match="does not decode"):
        Algorithm.decode(b"not an image")


def test_card_round_trip_and_bad_values():
    a = algo(3, image_threshold=0.25)
    b = Algorithm.from_card(a.to_card())
    assert b.channels == 3 and b.image_threshold == 0.25 and b.size_policy == a.size_policy
    with pytest.raises(AlgorithmError, match="image_threshold"):
        algo(image_threshold=1.5)
    with pytest.raises(AlgorithmError, match="multiples"):
        SizePolicy("pad", 32, (40, 64))
    with pytest.raises(AlgorithmError, match="lacks"):
        Algorithm.from_card({"thresholds": {}})


def test_calibration_best_accuracy_with_margin():
    scores = [0.0, 0.001, 0.002, 0.05, 0.08, 0.2]
    labels = [0, 0, 0, 1, 1, 1]
    t, acc = calibrate_image_threshold(scores, labels)
    assert acc == 1.0 and 0.002 < t < 0.05 and t == pytest.approx(0.026)
    t, acc = calibrate_image_threshold([0.0, 0.0], [0, 0])
    assert acc == 1.0 and t > 0.0


def test_calibration_geometric_margin_keeps_small_defects():
    """Geometric: the mean of the gap's ends in log terms; an OK side of 0 counts as one pixel."""
    scores = [0.0, 0.001, 0.002, 0.05, 0.08, 0.2]
    labels = [0, 0, 0, 1, 1, 1]
    t, acc = calibrate_image_threshold(scores, labels, min_fraction=1e-6)
    assert acc == 1.0 and t == pytest.approx((0.002 * 0.05) ** 0.5)
    # nothing predicted on OK images: the lower end is one pixel, far below the linear rule's half-way point
    t, _ = calibrate_image_threshold([0.0, 0.0, 0.004, 0.01], [0, 0, 1, 1], min_fraction=1e-6)
    linear, _ = calibrate_image_threshold([0.0, 0.0, 0.004, 0.01], [0, 0, 1, 1])
    assert t == pytest.approx((1e-6 * 0.004) ** 0.5) and linear == pytest.approx(0.002)
    assert 1e-6 < t < 0.001 < linear  # a defect of a quarter of the smallest one is still caught
    # overlapping classes: still the best-accuracy gap, and a gap that ends below one pixel falls back to linear
    t, acc = calibrate_image_threshold([0.0, 0.03, 0.02, 0.05], [0, 0, 1, 1], min_fraction=1e-6)
    assert acc == 0.75 and 0.03 < t < 0.05
    t, _ = calibrate_image_threshold([0.0, 1e-7], [0, 1], min_fraction=1e-6)
    assert t == pytest.approx(5e-8)


def test_configs_load_and_help_explains_every_key(capsys):
    from importlib import resources

    import yaml

    from asset.cli import main
    from asset.config import load_config

    demo = resources.files("asset").joinpath("configs/demo.yaml")
    cfg = load_config(str(demo))
    assert cfg["model"]["encoder"] == "tu-efficientnet_lite0" and cfg["trainer"]["max_time"]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    defaults = yaml.safe_load(resources.files("asset").joinpath("configs/default.yaml").read_text())

    def keys(d, prefix=""):
        for k, v in d.items():
            yield k
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")

    assert all(f"{k}:" in out for k in keys(defaults))
    assert "--resume" in out and "DDP" in out


@pytest.mark.parametrize("pixel_threshold", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_fast_postprocess_matches_the_sigmoid_definition(pixel_threshold):
    """The mask is thresholded on the logits (no per-pixel exp): it must equal sigmoid(logits) >= threshold."""
    rng = np.random.default_rng(3)
    a = Algorithm(3, SizePolicy("pad", 32), [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], pixel_threshold, 0.01)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(2)]
    x, metas = a.preprocess(images)
    mean, std = np.array([0.4, 0.5, 0.6]).reshape(3, 1, 1), np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1)
    np.testing.assert_allclose(x[1, :, :40, :50], (images[1].transpose(2, 0, 1) / 255 - mean) / std, atol=1e-5)
    logits = rng.normal(0, 4, (2, 1, 64, 64)).astype(np.float32)
    logits[0, 0, 0, 0] = 200.0  # saturated and extreme values stay finite
    logits[1, 0, 0, 0] = -200.0
    for lg, p in zip(logits, a.postprocess(logits, metas, keep_prob=True)):
        reference = 1.0 / (1.0 + np.exp(-lg[0, :40, :50].astype(np.float64)))
        expected = reference >= pixel_threshold if 0 < pixel_threshold < 1 else np.full((40, 50), pixel_threshold == 0)
        np.testing.assert_array_equal(p.mask.astype(bool), expected)
        assert p.mask.dtype == np.uint8 and p.defect_fraction == pytest.approx(expected.mean())
        np.testing.assert_allclose(p.prob, reference, atol=1e-6)
        assert p.max_prob == pytest.approx(reference.max(), abs=1e-6) and np.isfinite(p.prob).all()
