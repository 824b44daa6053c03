"""The inference server: API, decisions equal to the predictor's, bad input, batching, auth, metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as coco_mask

from asset.predictor import Predictor
from asset.serve import Settings, create_app
from asset.serve.batcher import DynamicBatcher, QueueFull
from asset.serve.settings import SettingsError
from tests.asset.serve_helpers import exported_copy, png_bytes, split_images


@pytest.fixture(scope="module")
def served_model(trained_model, tmp_path_factory):
    return exported_copy(trained_model, tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def images(tiny_dataset):
    return split_images(tiny_dataset)


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"server not ready: {client.get('/readyz').json()}")


@pytest.fixture(scope="module")
def client(served_model):
    with TestClient(create_app(Settings(model=str(served_model), threads=1, max_wait_ms=2))) as c:
        wait_ready(c)
        yield c


def test_predict_agrees_with_the_predictor(client, served_model, images):
    with Predictor(served_model, backend="onnxruntime", threads=1) as predictor:
        for sample_id, _, data in images:
            expected = predictor.predict_bytes([data])[0]
            answer = client.post("/predict", files={"image": (f"{sample_id}.png", data, "image/png")})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["defective"] == expected.defective
            assert body["defect_fraction"] == pytest.approx(expected.defect_fraction, abs=1e-9)
            mask = coco_mask.decode({"size": body["mask"]["size"], "counts": body["mask"]["counts"].encode()})
            assert np.array_equal(mask, expected.mask)
            assert (body["width"], body["height"]) == (mask.shape[1], mask.shape[0])
            assert body["model"]["name"] == "model" and len(body["model"]["checksum"]) == 64
            assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] > 0


def test_raw_body_mask_png_and_threshold_override(client, images):
    _, _, data = images[0]
    body = client.post("/predict?mask=png&threshold=1.0", content=data, headers={"content-type": "image/png"}).json()
    png = np.array(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert set(np.unique(png)) <= {0, 255} and png.shape == (body["height"], body["width"])
    assert body["threshold"] == 1.0 and body["defective"] is (body["defect_fraction"] >= 1.0)
    low = client.post("/predict?threshold=0", content=data, headers={"content-type": "image/png"}).json()
    assert low["defective"] is True and low["threshold"] == 0
    assert client.post("/predict?threshold=1.5", content=data, headers={"content-type": "image/png"}).status_code == 422


def test_batch_answers_in_order(client, images):
    files = [("images", (f"{i}.png", data, "image/png")) for i, (_, _, data) in enumerate(images[:5])]
    answer = client.post("/predict/batch", files=files)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    singles = [client.post("/predict", files={"image": ("x.png", d, "image/png")}).json() for _, _, d in images[:5]]
    assert [r["defect_fraction"] for r in results] == [s["defect_fraction"] for s in singles]


def truncated_png(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming a huge image (its pixels are never sent)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, payload: struct.pack(">I", len(payload)) + kind + payload + struct.pack(  # noqa: E731
        ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_input_then_still_serving(served_model, images):
    _, _, good = images[0]
    settings = Settings(model=str(served_model), threads=1, max_body_mb=0.05, max_pixels=100_000)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        png = {"content-type": "image/png"}
        cases = [
            (client.post("/predict", content=b"", headers=png), 400),
            (client.post("/predict", content=b"hello, not an image" * 3, headers=png), 415),
            (client.post("/predict", content=truncated_png(good), headers=png), 400),
            (client.post("/predict", content=good, headers={"content-type": "text/plain"}), 415),
            (client.post("/predict", content=b"\x89PNG\r\n\x1a\n" + b"0" * 60_000, headers=png), 413),
            (client.post("/predict", content=bomb_png(), headers=png), 413),
            (client.post("/predict", files={"picture": ("x.png", good, "image/png")}), 422),
            (client.post("/predict/batch", files={"image": ("x.png", good, "image/png")}), 422),
        ]
        for i, (response, status) in enumerate(cases):
            assert response.status_code == status, (i, response.text)
            body = response.json()
            assert set(body) == {"error", "detail"} and body["detail"], (i, body)
        # 16-bit and 4-channel images are converted (documented), not refused
        sixteen = png_bytes(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
        rgba = png_bytes(np.dstack([np.full((32, 32), v, np.uint8) for v in (90, 90, 90, 255)]))
        for data in (sixteen, rgba):
            answer = client.post("/predict", content=data, headers=png)
            assert answer.status_code == 200, answer.text
            assert (answer.json()["width"], answer.json()["height"]) == (32, 32)
        answer = client.post("/predict", content=good, headers=png)
        assert answer.status_code == 200 and "defective" in answer.json()


def test_health_model_metrics(client, images):
    assert client.post("/predict", content=images[0][2], headers={"content-type": "image/png"}).status_code == 200
    missing = client.get("/no/such/route-123")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    card = client.get("/model").json()
    assert card["card"]["format"] == "defect-model/1" and card["model"]["backend"] == "onnxruntime"
    text = client.get("/metrics").text
    for name in ("asset_requests_total", "asset_request_latency_seconds", "asset_batch_size", "asset_queue_depth",
                 "asset_model_load_seconds"):
        assert name in text
    assert 'route="/predict",status="200"' in text
    assert 'route="unmatched",status="404"' in text and "route-123" not in text  # no label per client path
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/healthz", "/readyz", "/model", "/metrics"} <= set(schema["paths"])
    assert "image/png" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "http" not in page.text.split("<script>")[1]


def test_readyz_503_until_loaded_and_load_errors_logged_not_shown(tmp_path, caplog):
    caplog.set_level("ERROR", logger="asset.serve")
    with TestClient(create_app(Settings(model=str(tmp_path / "missing")))) as client:
        deadline = time.time() + 10
        while time.time() < deadline and "error id" not in client.get("/readyz").text:
            time.sleep(0.05)
        answer = client.get("/readyz")
        detail = answer.json()["detail"]
        assert answer.status_code == 503 and "failed to load" in detail
        assert "missing" not in detail and str(tmp_path) not in detail  # no path to the client...
        eid = detail.split("error id ")[1].split(";")[0]
        line = [r.getMessage() for r in caplog.records if eid in r.getMessage()]
        assert line and "missing" in line[0]  # ...the details are in the log line carrying the same id
        assert client.get("/healthz").status_code == 200
        assert client.post("/predict", content=b"x", headers={"content-type": "image/png"}).status_code == 503


def test_api_key(served_model, images):
    settings = Settings(model=str(served_model), threads=1, api_key="s3cret")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        _, _, data = images[0]
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        for path in ("/model", "/metrics"):
            assert client.get(path).status_code == 401
        assert client.get("/").status_code == 200  # the page is open: it holds no data and asks for the key
        assert client.post("/predict", content=data, headers={"content-type": "image/png"}).status_code == 401
        ok = client.post("/predict", content=data, headers={"content-type": "image/png", "X-API-Key": "s3cret"})
        assert ok.status_code == 200
        # the key in the address is refused everywhere: it would end up in logs and browser history
        assert client.get("/model", params={"api_key": "s3cret"}).status_code == 401
        assert client.post("/predict", params={"api_key": "s3cret"}, content=data,
                           headers={"content-type": "image/png"}).status_code == 401
        refused = client.get("/model", headers={"X-API-Key": "wrong"})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert client.get("/anything-else").status_code == 401
        text = client.get("/metrics", headers={"X-API-Key": "s3cret"}).text
        assert 'route="/model",status="401"' in text and 'route="unmatched",status="401"' in text
        assert "anything-else" not in text


def test_batcher_groups_requests_and_bounds_its_queue():
    calls: list[int] = []

    def predict(images):
        calls.append(len(images))
        time.sleep(0.05)
        return [int(i.sum()) for i in images]

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch=8, max_wait_ms=1000, queue_size=4)
        batcher.start()
        batcher.expect(4)  # as the server's handlers do while they decode: the worker waits for all four
        results = await asyncio.gather(*(batcher.submit([np.full((2, 2), i, np.uint8)], announced=True)
                                         for i in range(4)))
        assert [r[0] for r in results] == [[4 * i] for i in range(4)]
        assert calls == [4]  # four concurrent requests, one backend call
        # fill the queue while the worker is busy: the overflow is refused at once
        tasks = [asyncio.ensure_future(batcher.submit([np.zeros((1, 1), np.uint8)])) for _ in range(12)]
        await asyncio.sleep(0)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(o, QueueFull) for o in outcomes)
        assert any(not isinstance(o, Exception) for o in outcomes)
        await batcher.stop()

    asyncio.run(scenario())


def test_batcher_waits_only_for_announced_company():
    calls: list[int] = []

    def predict(images):
        calls.append(len(images))
        return [0 for _ in images]

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch=8, max_wait_ms=400, queue_size=8)
        batcher.start()
        t = time.perf_counter()
        await batcher.submit([np.zeros((2, 2), np.uint8)])  # alone, nothing announced: no 400 ms wait
        assert time.perf_counter() - t < 0.2 and calls == [1]
        batcher.expect(1)  # a handler still decoding its image: the batch waits for it (up to max_wait)

        async def late():
            await asyncio.sleep(0.05)
            return await batcher.submit([np.zeros((2, 2), np.uint8)], announced=True)

        await asyncio.gather(batcher.submit([np.zeros((2, 2), np.uint8)]), late())
        assert calls == [1, 2]
        await batcher.stop()

    asyncio.run(scenario())


async def until(condition, timeout: float = 10.0) -> None:
    """Poll `condition` (threads are involved: a fixed sleep would be flaky on a busy 2-core machine)."""
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_batcher_one_backend_thread_errors_and_shutdown():
    threads: set[int] = set()
    gate = threading.Event()

    def predict(images):
        threads.add(threading.get_ident())
        gate.wait(5)
        if images[0][0, 0] == 9:
            raise RuntimeError("engine failed")
        return [int(i[0, 0]) for i in images]

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch=1, max_wait_ms=0, queue_size=8)
        batcher.start()
        warm_thread = await batcher.run_blocking(threading.get_ident)
        gate.set()
        with pytest.raises(RuntimeError, match="engine failed"):  # a failing batch fails its requests only
            await batcher.submit([np.full((1, 1), 9, np.uint8)])
        assert (await batcher.submit([np.full((1, 1), 3, np.uint8)]))[0] == [3]
        assert threads == {warm_thread}  # warm-up and every batch on the one backend thread
        gate.clear()
        in_flight = asyncio.ensure_future(batcher.submit([np.full((1, 1), 1, np.uint8)]))
        waiting = asyncio.ensure_future(batcher.submit([np.full((1, 1), 2, np.uint8)]))
        await until(lambda: batcher.depth == 1)  # one taken by the worker (blocked in predict), one waiting
        stopping = asyncio.ensure_future(batcher.stop())
        await until(batcher.stopping.is_set)
        gate.set()
        await stopping
        assert (await in_flight)[0] == [1]  # the batch in flight finishes
        with pytest.raises(QueueFull, match="shutting down"):  # what still waited is refused, not lost
            await waiting

    asyncio.run(scenario())


def test_batcher_survives_requests_cancelled_while_waiting_or_running():
    """A client that goes away cancels its handler: its job is skipped or its answer dropped, nothing else."""
    gate = threading.Event()
    calls: list[int] = []

    def predict(images):
        calls.append(len(images))
        gate.wait(5)
        return [int(i[0, 0]) for i in images]

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch=1, max_wait_ms=0, queue_size=8)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit([np.full((1, 1), 1, np.uint8)]))
        waiting = asyncio.ensure_future(batcher.submit([np.full((1, 1), 2, np.uint8)]))
        await until(lambda: calls == [1] and batcher.depth == 1)  # one in the backend, one waiting
        running.cancel()
        waiting.cancel()
        gate.set()
        assert (await batcher.submit([np.full((1, 1), 3, np.uint8)]))[0] == [3]
        assert calls == [1, 1]  # the cancelled waiting job never reached the backend
        await batcher.stop()

    asyncio.run(scenario())


def test_queue_full_is_503_with_retry_after(served_model, images):
    _, _, data = images[0]
    with TestClient(create_app(Settings(model=str(served_model), threads=1))) as client:
        wait_ready(client)

        def refuse(*a, **k):
            raise QueueFull("queue full (1 requests waiting)")

        client.app.state.batcher.submit = refuse
        answer = client.post("/predict", content=data, headers={"content-type": "image/png"})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"] == "overloaded"


def test_settings_from_environment():
    env = {"ASSET_MODEL": "m", "ASSET_MAX_BATCH": "4", "ASSET_API_KEY": "k", "ASSET_MAX_WAIT_MS": "2.5"}
    s = Settings.from_env(env, backend="openvino")
    assert (s.model, s.max_batch, s.api_key, s.max_wait_ms, s.backend) == ("m", 4, "k", 2.5, "openvino")
    # unset: 4 on CPU (larger batches are slower per image on a CPU engine), 8 on a GPU
    assert Settings(model="m").max_batch == 4 and Settings(model="m", max_batch=16).max_batch == 16
    assert Settings(model="m", device="cuda:0").max_batch == 8 and Settings(model="m", backend="tensorrt").max_batch == 8
    with pytest.raises(SettingsError, match="ASSET_MAX_BATCH"):
        Settings.from_env({"ASSET_MODEL": "m", "ASSET_MAX_BATCH": "lots"})
    with pytest.raises(SettingsError, match="no model"):
        Settings.from_env({})
    limits = Settings.from_env({"ASSET_MODEL": "m", "ASSET_MAX_BATCH_PIXELS": "1000", "ASSET_MAX_INFLIGHT_PIXELS": "5000",
                                "ASSET_MAX_PIXELS": "900", "ASSET_MAX_INPUT_FACTOR": "2.5"})
    assert (limits.max_batch_pixels, limits.max_inflight_pixels, limits.max_input_factor) == (1000, 5000, 2.5)
    with pytest.raises(SettingsError, match="max_inflight_pixels"):
        Settings.from_env({"ASSET_MODEL": "m", "ASSET_MAX_INFLIGHT_PIXELS": "1000"})  # below max_pixels
    with pytest.raises(SettingsError, match="max_input_factor"):
        Settings(model="m", max_input_factor=0.5).check()


def test_every_setting_has_a_flag_and_an_environment_variable(monkeypatch):
    import argparse
    from dataclasses import fields

    from asset.commands import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["serve"]
    flags = {a.dest: a.option_strings[0] for a in sub._actions if a.option_strings and a.dest != "help"}
    env = Settings.env_names()
    internal = {"warmup"}  # set by code (tests), not by users
    for f in fields(Settings):
        if f.name not in internal:
            assert flags.get(f.name) == "--" + f.name.replace("_", "-"), f"{f.name}: no --flag"
            assert env.get(f.name) == "ASSET_" + f.name.upper(), f"{f.name}: no environment variable"
            assert f.metadata["help"], f"{f.name}: no help"
    # options win over the environment; host and port come through Settings like every other setting
    monkeypatch.setattr(Settings, "check", lambda self: None)
    args = sub.parse_args(["--port", "9001", "--max-wait-ms", "1.5", "--allow-no-api-key"])
    s = Settings.from_env({"ASSET_HOST": "0.0.0.0", "ASSET_PORT": "9000", "ASSET_MAX_WAIT_MS": "3"},
                          **{name: getattr(args, name) for name in env})
    assert (s.host, s.port, s.max_wait_ms, s.allow_no_api_key) == ("0.0.0.0", 9001, 1.5, True)
    assert (Settings().host, Settings().port) == ("127.0.0.1", 8000)
    with pytest.raises(SettingsError, match="ASSET_PORT"):
        Settings.from_env({"ASSET_PORT": "eighty"})
