"""Server robustness (issue 27): 16-bit images decoded within a memory bound, probes answering while slow clients
hold connections, a failing request not failing its batch, a model that does not load retried then fatal, and 400
answers in the server's own words (never a library's exception text). A stand-in predictor: no model needed."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from asset.serve import Settings, create_app
from asset.serve.batcher import DynamicBatcher
from tests import REPO
from tests.asset.serve_helpers import free_port, png_bytes

PNG = {"content-type": "image/png"}


class FakePredictor:
    """What the app uses of a Predictor: predict(images) -> predictions with a mask at the image's size."""

    def __init__(self, model_dir: Path, fail_on=None) -> None:
        self.model_dir = model_dir
        self.card = {"created": "2026-12-04T00:00:00Z", "input": {"train_size": [32, 32]}}
        self.backend = SimpleNamespace(name="fake", precision="fp32")
        self.algorithm = SimpleNamespace(size_policy=SimpleNamespace(size=(32, 32)), channels=1)
        self.fail_on = fail_on
        self.calls: list[int] = []

    def predict(self, images):
        self.calls.append(len(images))
        if self.fail_on is not None and any(self.fail_on(i) for i in images):
            raise RuntimeError("backend failed on this image")
        return [SimpleNamespace(mask=(np.asarray(i)[..., 0] if np.ndim(i) == 3 else np.asarray(i)) > 127,
                                threshold=0.5, value=0.0, defect_fraction=0.0, score=0.0) for i in images]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- 16-bit images, memory
def test_a_16_bit_40_mp_png_decodes_within_a_memory_bound(tmp_path):
    """A 40 MP 16-bit PNG (a few hundred KB) decoded the way the server decodes uploads: the process's peak RSS
    grows by at most 4 bytes a pixel (Pillow's 16-bit image: 2, the 8-bit result: 1, bands). It was ~25 bytes a
    pixel (float64 copies): 1 GB for this one image."""
    height, width = 5000, 8000
    ramp = (np.arange(width, dtype=np.uint32) * 65535 // (width - 1)).astype(np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()).save(path)
    del ramp
    code = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        from asset.serve.imaging import decode_upload
        data = open({str(path)!r}, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = decode_upload(data, 40_000_000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        assert out.dtype == np.uint8 and out.shape == ({height}, {width}), (out.dtype, out.shape)
        assert out[0, 0] == 0 and out[0, -1] == 255 and out[-1, {width // 2}] == 127, out[0, [0, -1]]
        print(before, after)
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    before, after = map(int, run.stdout.split())
    grown = after - before
    assert grown < 4 * height * width, f"decoding grew the peak RSS by {grown / 1e6:.0f} MB"


def test_16_bit_scaling_matches_the_8_bit_range_rule():
    from asset.algorithm import pil_to_array

    wide = np.array([[0, 256, 257, 65535], [1000, 30000, 65534, 514]], np.uint16)
    assert pil_to_array(Image.fromarray(wide)).tolist() == (wide // 257).astype(np.uint8).tolist()
    narrow = np.array([[0, 17, 255]], np.uint16)  # an 8-bit range stored in 16 bits: kept
    assert pil_to_array(Image.fromarray(narrow)).tolist() == [[0, 17, 255]]
    signed = np.array([[-5, 70000, 65535, 0]], np.int32)  # mode I: clipped
    assert pil_to_array(Image.fromarray(signed)).tolist() == [[0, 255, 255, 0]]
    big = Image.fromarray(np.arange(3000 * 700, dtype=np.uint32).reshape(3000, 700).astype(np.uint16))
    assert np.array_equal(pil_to_array(big), (np.asarray(big) // 257).astype(np.uint8))  # across bands


# ----------------------------------------------------------------------------- answers in the server's words
def test_a_corrupt_image_is_answered_without_pillow_s_words(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="asset.serve")
    good = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    truncated = good[:len(good) // 2]  # a valid header, then half the data
    settings = Settings(model=str(tmp_path), warmup=False)
    with TestClient(create_app(settings, predictor=FakePredictor(tmp_path))) as client:
        r = client.post("/predict", content=truncated, headers=PNG)
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert detail.startswith("PNG image does not decode: its data is truncated or corrupt (error id ")
        eid = detail.split("error id ")[1].rstrip(")")
        logged = [rec.getMessage() for rec in caplog.records if eid in rec.getMessage()]
        assert logged and ("truncated" in logged[0] or "Error" in logged[0])  # Pillow's words, in the log only
        assert client.post("/predict", content=good, headers=PNG).status_code == 200


# ----------------------------------------------------------------------------- batches
def test_one_failing_request_does_not_fail_its_batch():
    poison = lambda image: image[0, 0] == 255  # noqa: E731
    fake = FakePredictor(Path("."), fail_on=poison)

    async def scenario():
        batcher = DynamicBatcher(fake.predict, max_batch=8, max_wait_ms=200, queue_size=16)
        batcher.start()
        try:
            good = [np.zeros((4, 4), np.uint8) for _ in range(3)]
            bad = np.full((4, 4), 255, np.uint8)
            batcher.expect(4)  # all four are on their way: they form one batch
            tasks = [asyncio.ensure_future(batcher.submit([img], announced=True)) for img in (*good[:2], bad, good[2])]
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await batcher.stop()

    outcomes = asyncio.run(scenario())
    assert fake.calls[0] == 4  # one batch of the four requests, which failed
    assert [isinstance(o, Exception) for o in outcomes] == [False, False, True, False]
    assert "backend failed" in str(outcomes[2])
    assert all(len(o[0]) == 1 for o in outcomes if not isinstance(o, Exception))


# ----------------------------------------------------------------------------- a model that does not load
def test_a_model_that_does_not_load_is_retried_then_fatal(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="asset.serve")
    fatal = threading.Event()
    settings = Settings(model=str(tmp_path / "missing"), load_attempts=3, load_retry_s=0.01)
    with TestClient(create_app(settings, on_fatal=fatal.set)) as client:
        assert fatal.wait(60)
        assert client.get("/healthz").status_code == 200
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "failed to load" in answer.json()["detail"]
    attempts = [r.getMessage() for r in caplog.records if "did not load (attempt" in r.getMessage()]
    assert [a.split("(attempt ")[1][:6] for a in attempts] == ["1 of 3", "2 of 3", "3 of 3"]


def test_a_model_that_loads_on_a_later_attempt_serves(tmp_path, monkeypatch):
    import asset.serve.app as app_module

    tries = []

    def flaky(settings):
        tries.append(1)
        if len(tries) < 2:
            raise OSError("device not ready yet")
        return FakePredictor(tmp_path)

    monkeypatch.setattr(app_module, "_load_predictor", flaky)
    settings = Settings(model=str(tmp_path), load_attempts=3, load_retry_s=0.01, warmup=False)
    with TestClient(create_app(settings, on_fatal=lambda: pytest.fail("fatal"))) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200 and len(tries) == 2
        assert client.post("/predict", content=png_bytes(np.zeros((8, 8), np.uint8)), headers=PNG).status_code == 200


def test_asset_serve_exits_non_zero_when_the_model_never_loads(tmp_path, monkeypatch):
    """The process does not stay up unready for ever: after the last attempt `asset serve` stops and exits 1."""
    code = textwrap.dedent("""
        import sys
        import asset.serve.app as app_module
        import asset.modeldir, asset.tiling
        asset.modeldir.verify = lambda m: {"input": {"train_size": [32, 32]}}  # the directory checks pass...
        def broken(settings):
            raise OSError("the backend cannot start")  # ...the backend does not
        app_module._load_predictor = broken
        from asset.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    env = {"PATH": "/usr/bin:/bin", "ASSET_LOAD_ATTEMPTS": "2", "ASSET_LOAD_RETRY_S": "0.01"}
    run = subprocess.run([sys.executable, "-c", code, "serve", "--model", str(tmp_path), "--port", str(free_port())],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "the model did not load" in run.stderr and "attempt 2 of 2" in run.stderr


# ----------------------------------------------------------------------------- slow clients
def start_server(app, limit: int):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           limit_concurrency=limit))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, thread, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not start")


def slow_client(port: int) -> socket.socket:
    """A client that sends headers announcing a 10 MB image, then a few bytes, and stalls."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10000000\r\n\r\n"
              + b"\x89PNG\r\n\x1a\n")
    return s


def test_probes_answer_while_slow_clients_hold_connections(tmp_path):
    limit = 16
    settings = Settings(model=str(tmp_path), warmup=False)
    server, thread, url = start_server(create_app(settings, predictor=FakePredictor(tmp_path)), limit)
    port = int(url.rsplit(":", 1)[1])
    clients = []
    try:
        clients = [slow_client(port) for _ in range(limit - 4)]  # stalled uploads, under the limit
        with httpx.Client(timeout=10) as c:
            assert c.get(f"{url}/healthz").status_code == 200 and c.get(f"{url}/readyz").status_code == 200
            ok = c.post(f"{url}/predict", content=png_bytes(np.zeros((8, 8), np.uint8)), headers=PNG)
            assert ok.status_code == 200
        clients += [slow_client(port) for _ in range(3 * limit)]  # far more than the limit: refused, not queued
        with httpx.Client(timeout=10) as c:
            refused = c.post(f"{url}/predict", content=png_bytes(np.zeros((8, 8), np.uint8)), headers=PNG)
            assert refused.status_code == 503  # at once, not after the stalled uploads
            assert c.get(f"{url}/healthz").status_code in (200, 503)  # an answer either way, the loop is free
    finally:
        for s in clients:
            s.close()
    try:
        with httpx.Client(timeout=10) as c:
            for _ in range(200):  # the stalled connections are closed: the server serves again
                if c.get(f"{url}/readyz").status_code == 200:
                    break
                time.sleep(0.05)
            assert c.get(f"{url}/readyz").status_code == 200
            assert c.post(f"{url}/predict", content=png_bytes(np.zeros((8, 8), np.uint8)),
                          headers=PNG).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


def test_limit_concurrency_setting(monkeypatch):
    from asset.serve.settings import SettingsError

    assert Settings(model="m").limit_concurrency == 64
    assert Settings.from_env({"ASSET_MODEL": "m", "ASSET_LIMIT_CONCURRENCY": "8"}).limit_concurrency == 8
    with pytest.raises(SettingsError, match="limit_concurrency must be >= 2"):
        Settings.from_env({"ASSET_MODEL": "m", "ASSET_LIMIT_CONCURRENCY": "1"})


def test_mask_encoding_runs_off_the_event_loop(tmp_path, monkeypatch):
    import asset.serve.routes as routes

    threads = []
    real = routes.encode_mask

    def recording(mask, png):
        try:
            asyncio.get_running_loop()
            threads.append("on the loop")
        except RuntimeError:
            threads.append("worker")
        return real(mask, png)

    monkeypatch.setattr(routes, "encode_mask", recording)
    settings = Settings(model=str(tmp_path), warmup=False)
    with TestClient(create_app(settings, predictor=FakePredictor(tmp_path))) as client:
        r = client.post("/predict?mask=png", content=png_bytes(np.zeros((8, 8), np.uint8)), headers=PNG)
        assert r.status_code == 200 and r.json()["mask_png"]
    assert threads == ["worker"]
