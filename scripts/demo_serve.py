"""The demo's last step: serve the model on loopback, send one defective and one OK test image, print the
answers, stop the server. (`make serve` keeps a server up instead.)"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset version directory (test images come from it)")
    args = parser.parse_args()
    doc = json.loads((args.data / "dataset.json").read_text())
    test = [s for s in doc["samples"] if s["split"] == "test"]
    picks = [next(s for s in test if s["defective"]), next(s for s in test if not s["defective"])]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "asset.cli", "serve", "--model", str(args.model),
                               "--backend", "onnxruntime", "--host", "127.0.0.1", "--port", str(port)],
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                sys.exit("error: the server exited before it was ready")
            time.sleep(0.2)
        else:
            sys.exit("error: the server was not ready after 120 s")
        print(f"server ready at {url} (page: {url}/, API docs: {url}/docs)")
        for sample in picks:
            data = (args.data / sample["image"]).read_bytes()
            answer = httpx.post(f"{url}/predict", files={"image": (Path(sample["image"]).name, data, "image/png")},
                                timeout=60).json()
            truth = "defective" if sample["defective"] else "OK"
            said = "defective" if answer["defective"] else "OK"
            print(f"POST /predict {sample['id']} (ground truth {truth}): {said}, defect fraction "
                  f"{answer['defect_fraction']:.5f} (threshold {answer['threshold']:.5f}), "
                  f"{answer['timings']['total_ms']:.1f} ms total, {answer['timings']['inference_ms']:.1f} ms inference")
            print("   ", json.dumps({k: answer[k] for k in ("defective", "defect_fraction", "score", "threshold",
                                                           "width", "height", "model")}))
    finally:
        server.terminate()
        server.wait(timeout=30)
        print("server stopped")


if __name__ == "__main__":
    main()
