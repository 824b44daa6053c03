"""One request cannot kill the server: the cost of an image is bounded by the model's training size (asset/tiling.py),
a request by a pixel budget. Unit tests of the tiling, then `asset serve` as a real process fed huge images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
import pytest
from pycocotools import mask as coco_mask

from asset.algorithm import Algorithm, AlgorithmError, SizePolicy
from asset.predictor import Predictor
from asset.tiling import Tiler, axis_starts, train_size, upsample_blocks
from tests import REPO
from tests.asset.serve_helpers import exported_copy, free_port, png_bytes, serve_process, split_images

MB = 1024 * 1024


def algorithm(channels: int = 1) -> Algorithm:
    return Algorithm(channels, SizePolicy("pad", 32, None), [0.5] * channels, [0.5] * channels, 0.5, 0.01)


class Recorder:
    """A backend stand-in: logit = brightness - 0.5 (a bright pixel is 'defective'); records every call's shape."""

    def __init__(self):
        self.shapes: list[tuple] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.shapes.append(x.shape)
        return np.ascontiguousarray(x[:, :1])  # normalised with mean/std 0.5: (p/255 - 0.5) / 0.5


def test_train_size_from_card_or_refused():
    assert train_size({"input": {"train_size": [128, 96]}}) == (128, 96)
    assert train_size({"input": {"size_policy": {"mode": "pad", "size": [64, 64]}}}) == (64, 64)  # fixed canvas
    with pytest.raises(AlgorithmError, match="no input.train_size.*Retrain"):
        train_size({"input": {"size_policy": {"mode": "pad", "divisor": 32, "size": None}}})


@pytest.mark.parametrize("shape", [(6000, 6000), (20000, 200), (200, 20000), (1, 40_000), (333, 1000)])
def test_tiles_are_bounded_and_cover_the_image(shape):
    tiler = Tiler(algorithm(), (32, 32), max_factor=16)
    plan = tiler.plan(*shape)
    assert tiler.needs_tiles(*shape) and 1 <= plan.count <= 16
    (h, w), (th, tw) = plan.work, plan.tile
    assert h <= shape[0] and w <= shape[1]
    for starts, length, tile in ((plan.ys, h, th), (plan.xs, w, tw)):
        assert starts[0] == 0 and (starts[-1] + tile >= length)  # the tiles cover the axis
        assert all(b - a <= tile - tile // 4 for a, b in zip(starts, starts[1:]))  # and overlap
    assert axis_starts(100, 32) == [0, 23, 45, 68]


def test_tiled_prediction_finds_the_defect_at_the_original_size():
    tiler = Tiler(algorithm(), (32, 32), max_factor=16)
    image = np.zeros((3000, 2000), np.uint8)
    image[1000:2000, 500:1500] = 255  # one bright square, 1/6 of the image
    infer = Recorder()
    pred = tiler.predict(image, infer, batch_size=4)
    assert pred.mask.shape == image.shape
    assert pred.defect_fraction == pytest.approx(1 / 6, abs=0.01)
    inside, outside = pred.mask[1100:1900, 600:1400], np.r_[pred.mask[:900].ravel(), pred.mask[2100:].ravel()]
    assert inside.all() and not outside.any()
    assert sum(s[0] for s in infer.shapes) <= 16 and all(s[0] <= 4 and s[2:] == (32, 32) for s in infer.shapes)


def test_blocks_resize_as_cv2_does():
    src = np.random.default_rng(0).normal(size=(37, 53)).astype(np.float32)
    full = cv2.resize(src, (5000, 1100), interpolation=cv2.INTER_LINEAR)
    out = np.full_like(full, np.nan)
    for r, c, block in upsample_blocks(src, 1100, 5000):
        out[r:r + block.shape[0], c:c + block.shape[1]] = block
    assert np.abs(out - full).max() < 1e-4


def test_predictor_bounds_each_backend_call(trained_model):
    """Small images run whole (unchanged results); a large one runs as tiles; no call exceeds the budget."""
    with Predictor(trained_model, backend="pytorch", threads=1) as free, \
            Predictor(trained_model, backend="pytorch", threads=1, max_input_factor=4) as bounded:
        assert bounded.card["input"]["train_size"] == [32, 32]  # recorded at training time
        calls = Recorder()
        real = bounded.backend.infer
        bounded.backend.infer = lambda x: (calls(x), real(x))[1]
        rng = np.random.default_rng(1)
        small = [rng.integers(0, 255, (32, 32), dtype=np.uint8) for _ in range(6)]
        for a, b in zip(free.predict(small), bounded.predict(small)):
            assert np.array_equal(a.mask, b.mask)
        big = rng.integers(0, 255, (700, 300), dtype=np.uint8)
        pred = bounded.predict([big])[0]
        assert pred.mask.shape == (700, 300)
        assert all(s[0] * s[2] * s[3] <= 4 * 32 * 32 for s in calls.shapes), calls.shapes


# ---------------------------------------------------------------------- the real process
def black_png(height: int, width: int) -> bytes:
    return png_bytes(np.zeros((height, width), np.uint8))


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM, Linux), else its current RSS."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process(pid).memory_info().rss


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    """`asset serve` with its default limits (40 M pixels per image and per request, factor 16)."""
    model = exported_copy(trained_model, tmp_path_factory.mktemp("limits") / "model")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "ASSET_THREADS": "1"}
    for var in [v for v in env if v.startswith("ASSET_")]:
        if var != "ASSET_THREADS":
            env.pop(var)
    log = tmp_path_factory.mktemp("limits-log") / "server.log"
    with serve_process([sys.executable, "-m", "asset.cli", "serve", "--model", str(model)], env, log, port, REPO) as s:
        yield s


def answer_of(response: httpx.Response) -> tuple:
    body = response.json()
    return body["defective"], body["defect_fraction"], body["mask"]["counts"]


def test_huge_images_answered_server_alive_memory_bounded(server, tiny_dataset):
    url, proc, log = server
    client = httpx.Client(timeout=300)
    png = {"content-type": "image/png"}
    normal = split_images(tiny_dataset)[0][2]
    before = client.post(f"{url}/predict", content=normal, headers=png)
    assert before.status_code == 200, before.text
    baseline = peak_rss(proc.pid)

    for height, width in ((6000, 6000), (20000, 200), (200, 20000)):
        response = client.post(f"{url}/predict", content=black_png(height, width), headers=png)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["height"], body["width"]) == (height, width) and body["mask"]["size"] == [height, width]
        mask = coco_mask.decode({"size": body["mask"]["size"], "counts": body["mask"]["counts"].encode()})
        assert mask.shape == (height, width)

    over = client.post(f"{url}/predict", content=black_png(7000, 7000), headers=png)  # 49 M pixels
    assert over.status_code == 413 and "40000000" in over.json()["detail"], over.text

    large = black_png(2000, 2000)  # 32 x 4 M pixels = 128 M: over the 40 M budget of one request
    files = [("images", (f"{i}.png", large, "image/png")) for i in range(32)]
    refused = client.post(f"{url}/predict/batch", files=files)
    assert refused.status_code == 413, refused.text
    assert "128000000" in refused.json()["detail"] and "40000000" in refused.json()["detail"]
    fits = black_png(1000, 1000)  # 32 x 1 M = 32 M pixels: within the budget, each one tiled
    files = [("images", (f"{i}.png", fits, "image/png")) for i in range(32)]
    batch = client.post(f"{url}/predict/batch", files=files)
    assert batch.status_code == 200, batch.text
    assert len(batch.json()["results"]) == 32

    assert proc.poll() is None and client.get(f"{url}/healthz").status_code == 200
    peak = peak_rss(proc.pid)
    # The bound: what the server held before (model, engine, Python) plus, for the largest request allowed
    # (40 M pixels), about 8 bytes a pixel: the decoded image twice (Pillow's and the array), the mask and its
    # column-major copy for RLE (1 byte each), leaving room for the allocator. The network side is bounded by
    # 16 x the training size (a few MB for this model); running the 6000x6000 image whole would need > 4 GB for
    # the first 32-channel feature map alone.
    bound = baseline + 8 * 40_000_000
    assert peak < bound, f"peak RSS {peak / MB:.0f} MB over the bound {bound / MB:.0f} MB (baseline {baseline / MB:.0f})"
    after = client.post(f"{url}/predict", content=normal, headers=png)
    assert after.status_code == 200 and answer_of(after) == answer_of(before)
    print(f"baseline peak RSS {baseline / MB:.0f} MB, after the large requests {peak / MB:.0f} MB, "
          f"bound {bound / MB:.0f} MB")
