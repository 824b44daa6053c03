"""The demo's last step: serve the model on loopback, send one defective and one OK test image, print the
answers, stop the server. (`make serve` keeps a server up instead.)"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest import free_port, wait_ready  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset version directory (test images come from it)")
    args = parser.parse_args()
    doc = json.loads((args.data / "dataset.json").read_text())
    test = [s for s in doc["samples"] if s["split"] == "test"]
    picks = [next(s for s in test if s["defective"]), next(s for s in test if not s["defective"])]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "asset.cli", "serve", "--model", str(args.model),
                               "--backend", "onnxruntime", "--host", "127.0.0.1", "--port", str(port)],
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_ready(url, server)
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
