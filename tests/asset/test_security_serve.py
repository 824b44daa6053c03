"""What the server lets a client learn and do: errors answered with an id (details in the log only), no paths on
/model, the key in a header only, a warning when it is open to the network, pixels in flight bounded."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from asset.cli import main
from asset.commands.serve import exposure_warning
from asset.serve import Settings, create_app
from asset.serve.routes import public_card
from tests.asset.serve_helpers import exported_copy, split_images
from tests.asset.test_serve import wait_ready

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def served_model(trained_model, tmp_path_factory):
    return exported_copy(trained_model, tmp_path_factory.mktemp("security") / "model")


@pytest.fixture(scope="module")
def image(tiny_dataset):
    return split_images(tiny_dataset)[0][2]


def test_internal_error_answered_with_an_id_details_only_in_the_log(served_model, image, caplog):
    caplog.set_level(logging.ERROR, logger="asset.serve")
    with TestClient(create_app(Settings(model=str(served_model), threads=1)), raise_server_exceptions=False) as client:
        wait_ready(client)

        async def explode(*args, **kwargs):
            raise RuntimeError("engine failed reading /opt/secret/model.onnx")

        client.app.state.batcher.submit = explode
        answer = client.post("/predict", content=image, headers=PNG)
    assert answer.status_code == 500
    body = answer.json()
    assert body["error"] == "internal_error" and "secret" not in answer.text and "RuntimeError" not in answer.text
    eid = body["detail"].split("error id ")[1].split(";")[0]
    assert len(eid) == 12
    logged = [r for r in caplog.records if eid in r.getMessage()]
    assert logged and logged[0].exc_info and "/opt/secret/model.onnx" in str(logged[0].exc_info[1])


def test_model_route_shows_no_paths(served_model, image, tiny_dataset):
    with TestClient(create_app(Settings(model=str(served_model), threads=1))) as client:
        wait_ready(client)
        answer = client.get("/model")
    assert answer.status_code == 200
    card = answer.json()["card"]
    assert answer.json()["limits"]["max_batch_pixels"] == 40_000_000 and answer.json()["limits"]["train_size"] == [32, 32]
    assert "path" not in card["dataset"] and card["dataset"]["name"] == "tiny"
    for path in (str(tiny_dataset), str(served_model), str(served_model.parent)):
        assert path not in answer.text
    assert public_card({"a": ["/abs/dir/file.txt", "C:\\x\\y.bin", "rel/ok"], "dataset": {"path": "/d"}}) == {
        "a": ["file.txt", "y.bin", "rel/ok"], "dataset": {}}


def test_pixels_in_flight_bounded_503(served_model, image):
    settings = Settings(model=str(served_model), threads=1, max_pixels=10_000, max_batch_pixels=10_000,
                        max_inflight_pixels=20_000)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        client.app.state.inflight_pixels = 19_000  # other requests hold 19 000 decoded pixels
        busy = client.post("/predict", content=image, headers=PNG)  # 32 x 32 = 1 024 more: over 20 000
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "20000" in busy.json()["detail"]
        client.app.state.inflight_pixels = 0
        assert client.post("/predict", content=image, headers=PNG).status_code == 200
        assert client.app.state.inflight_pixels == 0  # released after the answer


@pytest.mark.parametrize("host,key,warned", [
    ("0.0.0.0", None, True), ("::", None, True), ("192.168.1.20", None, True), ("myhost.example", None, True),
    ("127.0.0.1", None, False), ("::1", None, False), ("localhost", None, False), ("0.0.0.0", "k", False),
])
def test_exposure_warning(host, key, warned):
    message = exposure_warning(host, key)
    assert (message is not None) == warned
    if warned:
        assert host in message and "API KEY" in message and "CORS" in message


def test_serve_is_closed_by_default_beyond_loopback(served_model, monkeypatch, caplog, capsys, tmp_path):
    """No key beyond loopback: refused (exit 2) unless --allow-no-api-key says so, then warned loudly; a key (also
    from a file), loopback, or a loopback publish (ASSET_PUBLISHED_HOST) start it."""
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: started.append(self.config))
    # uvicorn.Config applies its logging dictConfig, which closes every handler in the process; absl's closes its
    # stream (pytest's capture, once absl is imported by an export test) when it is not sys.stderr, as under capsys
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    for var in ("ASSET_API_KEY", "ASSET_API_KEY_FILE", "ASSET_HOST", "ASSET_MODEL", "ASSET_ALLOW_NO_API_KEY",
                "ASSET_PUBLISHED_HOST"):
        monkeypatch.delenv(var, raising=False)
    caplog.set_level(logging.WARNING, logger="asset.serve")
    assert main(["serve", "--model", str(served_model), "--host", "0.0.0.0", "--port", "8123"]) == 2
    assert not started and "no API key and listening on 0.0.0.0, beyond loopback: refused" in capsys.readouterr().err
    assert main(["serve", "--model", str(served_model), "--host", "0.0.0.0", "--port", "8123",
                 "--allow-no-api-key"]) == 0
    assert started and started[0].host == "0.0.0.0" and started[0].limit_concurrency == 64
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "asset.serve"]
    assert len(warnings) == 1 and "NO API KEY" in warnings[0] and "0.0.0.0" in warnings[0]
    caplog.clear()
    assert main(["serve", "--model", str(served_model), "--host", "0.0.0.0", "--api-key", "k"]) == 0
    key = tmp_path / "key"
    key.write_text("from-a-file\n")
    assert main(["serve", "--model", str(served_model), "--host", "0.0.0.0", "--api-key-file", str(key)]) == 0
    assert main(["serve", "--model", str(served_model), "--host", "127.0.0.1"]) == 0
    assert main(["serve", "--model", str(served_model), "--host", "0.0.0.0", "--published-host", "127.0.0.1"]) == 0
    monkeypatch.setenv("ASSET_PUBLISHED_HOST", "127.0.0.1")  # in a container, published on the host's loopback
    assert main(["serve", "--model", str(served_model), "--host", "0.0.0.0"]) == 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "asset.serve"]
    monkeypatch.setenv("ASSET_PUBLISHED_HOST", "0.0.0.0")
    assert main(["serve", "--model", str(served_model), "--host", "0.0.0.0"]) == 2
    assert "published on 0.0.0.0 (--published-host / ASSET_PUBLISHED_HOST)" in capsys.readouterr().err
    monkeypatch.setenv("ASSET_ALLOW_NO_API_KEY", "1")
    assert main(["serve", "--model", str(served_model), "--host", "0.0.0.0"]) == 0


def test_api_key_file_settings(tmp_path):
    from asset.serve.settings import SettingsError

    key = tmp_path / "key"
    key.write_text("  s3cret \n")
    assert Settings.from_env({"ASSET_MODEL": "m", "ASSET_API_KEY_FILE": str(key)}).api_key == "s3cret"
    key.write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        Settings.from_env({"ASSET_MODEL": "m", "ASSET_API_KEY_FILE": str(key)})
    with pytest.raises(SettingsError, match="No such file"):
        Settings.from_env({"ASSET_MODEL": "m", "ASSET_API_KEY_FILE": str(tmp_path / "none")})
    with pytest.raises(SettingsError, match="use 1 or 0"):
        Settings.from_env({"ASSET_MODEL": "m", "ASSET_ALLOW_NO_API_KEY": "maybe"})


def test_card_without_training_size_refused_at_start(served_model, tmp_path, capsys):
    import json
    import shutil

    from asset import modeldir

    old = shutil.copytree(served_model, tmp_path / "old")
    card = json.loads((old / "model.json").read_text())
    del card["input"]["train_size"]  # as written by an older asset
    modeldir.write_card(old, card)
    assert main(["serve", "--model", str(old), "--port", "8124"]) == 2
    assert "no input.train_size" in capsys.readouterr().err
