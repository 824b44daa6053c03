"""A served model for the server tests: the session's trained tiny model, exported to ONNX."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image


def exported_copy(trained_model: Path, dst: Path) -> Path:
    from asset.export import export_model

    model = Path(shutil.copytree(trained_model, dst))
    export_model(model, "onnx", log=lambda m: None)
    return model


def split_images(dataset: Path, split: str = "test") -> list[tuple[str, bool, bytes]]:
    """(id, defective, PNG bytes) of a split of a standard-format dataset."""
    doc = json.loads((Path(dataset) / "dataset.json").read_text())
    return [(s["id"], s["defective"], (Path(dataset) / s["image"]).read_bytes())
            for s in doc["samples"] if s["split"] == split]


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, timeout: float, alive=lambda: True) -> bool:
    """Poll GET /readyz until 200 (True), the deadline, or alive() turning False (False)."""
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


class LoopbackServer:
    """An app under a real uvicorn on 127.0.0.1 (a thread of this process); `with` waits until /readyz is 200.

        with LoopbackServer(create_app(settings)) as url: httpx.get(url + "/healthz")
    """

    def __init__(self, app, ready_timeout: float = 60.0) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.ready_timeout = ready_timeout
        self.thread = None

    def __enter__(self) -> str:
        import threading

        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn-test")
        self.thread.start()
        if wait_until_ready(self.url, self.ready_timeout):
            return self.url
        self.__exit__()
        raise RuntimeError(f"server at {self.url} did not become ready in {self.ready_timeout} s")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


@contextmanager
def serve_process(argv: list[str], env: dict, log: Path, port: int, cwd: Path, timeout: float = 60):
    """`asset serve` as a real process (argv after the interpreter) on 127.0.0.1:port; yields (url, proc, log).
    Fails the test with the server's log when it does not become ready; kills it afterwards."""
    import pytest

    proc = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=cwd,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_ready(url, timeout, alive=lambda: proc.poll() is None):
            pytest.fail(f"`asset serve` did not become ready:\n{log.read_text()}")
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
