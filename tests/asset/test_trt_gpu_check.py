"""scripts/gpu-check.sh and scripts/gpu_check.py where there is no GPU (here): the shell script parses, refuses at
once with the reason and exit status 2 without touching anything; the helper does the same, and its verdict and
table are checked on a made-up result."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import REPO

sys.path.insert(0, str(REPO))
from scripts import gpu_check as G  # noqa: E402


def test_shell_script_parses_and_refuses_without_a_gpu(tmp_path):
    script = REPO / "scripts" / "gpu-check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VENV": str(tmp_path / "venv")}  # no nvidia-smi on it
    if any(os.access(os.path.join(d, "nvidia-smi"), os.X_OK) for d in ("/usr/bin", "/bin")):
        pytest.skip("nvidia-smi is installed here")
    r = subprocess.run(["bash", str(script), "--no-demo"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("gpu-check: no NVIDIA GPU here"), r.stderr
    assert not (tmp_path / "venv").exists()


def test_helper_refuses_without_a_gpu(monkeypatch, capsys, tmp_path):
    import asset.backends

    monkeypatch.setattr(asset.backends, "cuda_device_count", lambda: 0)
    assert G.main(["--no-demo", "--out", str(tmp_path / "out")]) == 2
    assert "gpu-check: no NVIDIA GPU visible" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(asset.backends, "cuda_device_count", lambda: 1)
    assert G.no_gpu_reason() is None  # a GPU without TensorRT runs the rest; its TensorRT rows say why not


def test_targets_verdict_and_table():
    assert (G.target_ms("unet"), G.target_ms("pan"), G.target_ms("linknet")) == (2.13, 2.3, 1.97)

    def row(backend, precision, batch, ms):
        return {"backend": backend, "precision": precision, "batch": batch, "status": "ok", "ms": ms,
                "ms_per_image": ms / batch, "fps": batch * 1000 / ms}

    doc = {"gpu": "NVIDIA H200", "size": 512, "versions": {"tensorrt": "11.4.0.106"}, "models": {
        "MobileNetV2-Unet": {"arch": "unet", "exports": [
            {"export": "tensorrt-fp16", "status": "ok", "max_abs_diff": 0.01, "decisions_equal": 16, "images": 16,
             "pixel_iou_change": -0.001}], "speed": [row("pytorch", "fp32", 1, 4.0), row("tensorrt", "fp16", 1, 1.0)]},
        "MobileNetV2-PAN": {"arch": "pan", "exports": [{"export": "tensorrt-int8", "status": "failed",
                                                          "reason": "not a TensorRT INT8 model"}],
                            "speed": [row("pytorch", "fp32", 1, 5.0), row("tensorrt", "fp16", 1, 2.5),
                                      {"backend": "onnxruntime-tensorrt", "precision": "fp32", "status": "failed",
                                       "reason": "TensorrtExecutionProvider did not start"}]},
        "demo": {"arch": "demo", "exports": [], "speed": []}}}
    doc["verdict"] = G.verdict(doc)
    met = {v["model"]: v["met"] for v in doc["verdict"]}
    assert met == {"MobileNetV2-Unet": True, "MobileNetV2-PAN": False, "demo": None}
    text = G.markdown(doc)
    assert "| MobileNetV2-Unet | tensorrt | fp16 | 1 | 1.00 | 1.00 | 1000 | 4.00x | ok |" in text
    assert "| MobileNetV2-PAN | onnxruntime-tensorrt | fp32 | | | | | | failed: TensorrtExecutionProvider" in text
    assert "| MobileNetV2-PAN | tensorrt-int8 | failed | not a TensorRT INT8 model |" in text
    assert "MobileNetV2-Unet: TensorRT FP16 batch 1 1.00 ms on NVIDIA H200 vs target 2.13 ms" in text
    assert "MobileNetV2-PAN: TensorRT FP16 batch 1 2.50 ms on NVIDIA H200 vs target 2.3 ms" in text and "NOT MET" in text


def test_results_are_written_whole_after_each_model(tmp_path):
    doc = {"gpu": "NVIDIA H200", "size": 512, "versions": {}, "models": {}}
    G.write_results(doc, tmp_path)  # before any model: an empty table, not a missing file
    doc["models"]["MobileNetV2-Unet"] = {"arch": "unet", "exports": [], "speed": [
        {"backend": "tensorrt", "precision": "fp16", "status": "unavailable", "reason": "not installed"}]}
    text = G.write_results(doc, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-check.json", "gpu-check.md"]
    assert (tmp_path / "gpu-check.md").read_text() == text and "TensorRT not installed" in text
    assert "unavailable: not installed" in text and "goal 2.13 ms NOT checked" in text


def test_time_backend_is_the_speed_benchmark_on_any_device():
    """time_backend goes through asset.benchmark.run_speed (one timing loop): on the CPU here, a row per batch with
    consistent figures, and a row saying why for a precision that has no export."""
    from tests.asset.backend_helpers import shared

    model = shared()["model"]
    rows = G.time_backend(model, "onnxruntime", "fp32", [1, 2], 32, warmup=1, iters=3, device="cpu")
    assert [r["batch"] for r in rows] == [1, 2] and all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        assert r["ms"] > 0 and abs(r["ms_per_image"] * r["batch"] - r["ms"]) < 1e-2 and r["fps"] > 0
    bare = G.time_backend(model, "tensorrt", "fp16", [1], 32, warmup=1, iters=3, device="cpu")
    assert len(bare) == 1 and bare[0]["status"] in ("unavailable", "failed") and bare[0]["reason"], bare
