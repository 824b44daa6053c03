"""`asset serve` as a container runs it: a subprocess configured by ASSET_* environment variables, with torch and
Lightning made unimportable (the ONNX Runtime server must not need them); then scripts/loadtest.py against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests import REPO
from tests.asset.serve_helpers import exported_copy, free_port, serve_process, split_images

# Runs `asset serve` with torch, Lightning and SMP unimportable: any import of them raises ImportError.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "lightning", "pytorch_lightning", "segmentation_models_pytorch"):
            raise ImportError(f"{name} is blocked: the server must run without it")
sys.meta_path.insert(0, NoTorch())
from asset.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(code)
"""


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    model = exported_copy(trained_model, tmp_path_factory.mktemp("cli") / "model")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "ASSET_MODEL": str(model), "ASSET_API_KEY": "k3y",
           "ASSET_THREADS": "1", "ASSET_MAX_BATCH": "4", "ASSET_QUEUE_SIZE": "16"}
    log = tmp_path_factory.mktemp("cli-log") / "server.log"
    with serve_process([sys.executable, "-c", NO_TORCH, "serve"], env, log, port, REPO) as s:
        yield s


def test_serves_without_torch_configured_by_environment(server, tiny_dataset):
    url, proc, log = server
    _, _, data = split_images(tiny_dataset)[0]
    headers = {"content-type": "image/png"}
    assert httpx.post(f"{url}/predict", content=data, headers=headers).status_code == 401  # ASSET_API_KEY applies
    answer = httpx.post(f"{url}/predict", content=data, headers={**headers, "X-API-Key": "k3y"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"]["backend"] == "onnxruntime"
    card = httpx.get(f"{url}/model", headers={"X-API-Key": "k3y"}).json()
    assert card["batching"]["max_batch"] == 4 and card["batching"]["queue_size"] == 16  # from ASSET_*


def test_loadtest_script_at_1_8_32(server, tiny_dataset, tmp_path):
    url, proc, _ = server
    image = tmp_path / "part.png"
    image.write_bytes(split_images(tiny_dataset)[0][2])
    out = tmp_path / "load.json"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "loadtest.py"), "--url", url, "--image", str(image),
                          "--api-key", "k3y", "--concurrency", "1,8,32", "--duration", "15", "--max-requests", "48",
                          "--json", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    levels = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in levels] == [1, 8, 32]
    assert levels[0]["errors"] == 0 and levels[0]["ok"] == 48
    # concurrency 32 over a queue of 16 may be refused with 503 + Retry-After: never anything else
    assert all(set(lv["error_kinds"]) <= {"503"} and lv["ok"] > 0 for lv in levels), levels
    refused = subprocess.run([sys.executable, str(REPO / "scripts" / "loadtest.py"), "--url", "http://example.com",
                              "--image", str(image)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert refused.returncode != 0 and "loopback" in refused.stderr


def test_graceful_shutdown_and_bad_model(server, tmp_path):
    url, proc, log = server
    proc.send_signal(signal.SIGTERM)
    # uvicorn drains, runs the lifespan's shutdown (batcher stopped, backend closed), then re-raises the signal
    assert proc.wait(20) in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ASSET_MODEL", None)
    bad = subprocess.run([sys.executable, "-m", "asset.cli", "serve", "--model", str(tmp_path / "nothing"),
                          "--port", str(free_port())], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "error:" in bad.stderr and "nothing" in bad.stderr
