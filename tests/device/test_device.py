"""scripts/device.py without an engine: device detection from device-like root folders (the files in their real
formats), the plan it prints with --dry-run, and the bad-input messages that need no engine.
The engine-backed run (pull from a loopback registry, /predict, --update) is tests/containers/test_device.py."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO

SCRIPT = REPO / "scripts" / "device.py"
_spec = importlib.util.spec_from_file_location("device_script", SCRIPT)
device = importlib.util.module_from_spec(_spec)
sys.modules["device_script"] = device  # dataclasses look their module up there
_spec.loader.exec_module(device)

# /etc/nv_tegra_release as L4T writes it (JetPack 6.1 and JetPack 7.0)
TEGRA_R36 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
TEGRA_R38 = "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Mon Aug 25 20:38:05 UTC 2025\n"
NO_ENGINE = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def root_with(tmp_path: Path, *, tegra: str | None = None, model: bytes | None = None) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if tegra is not None:
        (root / "etc/nv_tegra_release").write_text(tegra)
    if model is not None:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/model").write_bytes(model)  # NUL-terminated, as the kernel exposes it
    return root


def model_dir(tmp_path: Path, *exports: str) -> Path:
    files = {"onnx": "exports/model.onnx", "onnx-int8": "exports/model-int8.onnx",
             "tensorrt-fp16": "exports/model-fp16.engine", "tensorrt-fp32": "exports/model-fp32.engine"}
    d = tmp_path / "models" / "demo"
    (d / "exports").mkdir(parents=True)
    for key in exports:
        (d / files[key]).write_bytes(b"x")
    card = {"format": "defect-model/1", "arch": "unet", "encoder": "mobilenet_v2",
            "exports": {k: {"file": files[k], "format": k} for k in exports}}
    (d / "model.json").write_text(json.dumps(card))
    return d


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=NO_ENGINE,
                          timeout=60)


def test_jetson_and_its_l4t_release(tmp_path):
    root = root_with(tmp_path, tegra=TEGRA_R38, model=b"NVIDIA Jetson AGX Thor Developer Kit\x00")
    dev = device.detect(root, "aarch64", {"runc", "nvidia"})
    assert (dev.platform, dev.kind, dev.l4t, dev.notes) == ("jetson", "jetson", (38, 2, 0), [])
    assert "NVIDIA Jetson AGX Thor Developer Kit" in dev.description and "L4T R38.2.0" in dev.description


def test_old_jetpack_and_missing_nvidia_runtime_are_named(tmp_path):
    root = root_with(tmp_path, tegra=TEGRA_R36, model=b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    dev = device.detect(root, "aarch64", {"runc"})
    assert dev.l4t == (36, 4, 0)
    assert any("L4T R36.4.0" in n and "JetPack 7" in n for n in dev.notes)
    assert any("no 'nvidia' runtime" in n for n in dev.notes)


def test_raspberry_pi_other_arm64_and_x86(tmp_path):
    pi = device.detect(root_with(tmp_path, model=b"Raspberry Pi 4 Model B Rev 1.4\x00"), "aarch64", {"runc"})
    assert (pi.platform, pi.kind, pi.description) == ("rpi4", "raspberry-pi", "Raspberry Pi 4 Model B Rev 1.4")
    (tmp_path / "b").mkdir()
    board = device.detect(root_with(tmp_path / "b", model=b"Radxa ROCK 5B\x00"), "arm64", {"runc"})
    assert (board.platform, board.kind) == ("rpi4", "arm64") and "Radxa ROCK 5B" in board.description
    (tmp_path / "c").mkdir()
    bare = root_with(tmp_path / "c")
    assert device.detect(bare, "x86_64", {"runc"}).platform == "x86-cpu"
    assert device.detect(bare, "x86_64", {"runc", "nvidia"}).platform == "x86-cuda"


def test_unsupported_architectures_and_bad_release_file(tmp_path):
    with pytest.raises(device.DeviceError, match="32-bit ARM.*64-bit OS"):
        device.detect(root_with(tmp_path, model=b"Raspberry Pi 3 Model B Rev 1.2\x00"), "armv7l", {"runc"})
    with pytest.raises(device.DeviceError, match="unsupported architecture 'riscv64'"):
        device.docker_arch("riscv64")
    with pytest.raises(device.DeviceError, match="not in the L4T format"):
        device.parse_l4t("Jetson something\n")


def test_dry_run_on_a_raspberry_pi(tmp_path):
    root = root_with(tmp_path, model=b"Raspberry Pi 4 Model B Rev 1.4\x00")
    model = model_dir(tmp_path, "onnx", "onnx-int8")
    r = run_script("--model", str(model), "--registry", "registry.local:5000/defect", "--tag", "v3", "--root",
                   str(root), "--machine", "aarch64", "--port", "8080", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "no Docker engine answers at unix:///nonexistent/docker.sock" in r.stdout
    assert "device:    Raspberry Pi 4 Model B Rev 1.4" in r.stdout
    assert "image:     registry.local:5000/defect/asset:rpi4-v3" in r.stdout
    assert (f"docker run -d --name defect-asset --restart unless-stopped -p 127.0.0.1:8080:8000 --read-only --tmpfs "
            "/tmp --security-opt no-new-privileges:true --cap-drop ALL -e ASSET_PUBLISHED_HOST=127.0.0.1 "
            f"-v {model}:/models/model:ro registry.local:5000/defect/asset:rpi4-v3 serve --model /models/model "
            "--backend onnxruntime --precision fp32 --host 0.0.0.0 --port 8000") in r.stdout
    assert "access:    no API key; reachable on 127.0.0.1:8080 (this machine only)" in r.stdout


def test_dry_run_on_a_jetson_serves_the_engine_with_the_nvidia_runtime(tmp_path):
    root = root_with(tmp_path, tegra=TEGRA_R38, model=b"NVIDIA Jetson AGX Thor Developer Kit\x00")
    model = model_dir(tmp_path, "onnx", "tensorrt-fp16")
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    r = run_script("--model", str(model), "--root", str(root), "--machine", "aarch64", "--dry-run",
                   "--network", "host", "--restart", "always", "--api-key-file", str(key))
    assert r.returncode == 0, r.stderr
    assert "image:     defect/asset:latest-jetson" in r.stdout
    assert "--runtime nvidia --restart always --network host" in r.stdout
    assert "-e ASSET_API_KEY_FILE=/run/secrets/asset-api-key" in r.stdout
    assert f"-v {key}:/run/secrets/asset-api-key:ro" in r.stdout and "s3cret" not in r.stdout
    assert "--backend tensorrt --precision fp16 --host 0.0.0.0 --port 8000 --device cuda" in r.stdout


def test_plan_container_settings(tmp_path):
    args = device.parse_args(["--model", str(model_dir(tmp_path, "onnx-int8")), "--platform", "x86-cpu",
                              "--machine", "x86_64", "--port", "9001", "--root", str(root_with(tmp_path))])
    plan = device.make_plan(args, "amd64", {"runc"})
    kw = plan.run_kwargs()
    assert kw["volumes"] == {str(plan.model_dir): {"bind": "/models/model", "mode": "ro"}}
    assert kw["ports"] == {"8000/tcp": ("127.0.0.1", 9001)} and kw["restart_policy"] == {"Name": "unless-stopped"}
    assert kw["read_only"] is True and kw["tmpfs"] == {"/tmp": "rw,noexec,nosuid,size=256m"}
    assert kw["security_opt"] == ["no-new-privileges:true"] and kw["cap_drop"] == ["ALL"]
    assert "mem_limit" not in kw  # no engine memory known, no --memory
    assert kw["environment"] == {"ASSET_PUBLISHED_HOST": "127.0.0.1"}
    assert device.make_plan(args, "amd64", {"runc"}, engine_memory=4 << 30).run_kwargs()["mem_limit"] == 3 << 30
    assert "runtime" not in kw and kw["command"][3:5] == ["--backend", "onnxruntime"]
    assert (plan.backend, plan.precision) == ("onnxruntime", "int8")
    assert json.loads(kw["labels"][device.LABEL])["model_dir"] == str(plan.model_dir)


@pytest.mark.parametrize("args, message", [
    (["--platform", "x86-cpu", "--machine", "x86_64"],
     "has no export the x86-cpu image can run: it needs onnx or onnx-int8 in model.json exports (have: "
     "tensorrt-fp16)"),
    (["--platform", "rpi4", "--machine", "x86_64"],
     "the rpi4 image is linux/arm64 and this device is linux/amd64: use --platform x86-cpu"),
    (["--machine", "armv7l"], "32-bit ARM system (armv7l)"),
])
def test_bad_input_without_an_engine(tmp_path, args, message):
    model = model_dir(tmp_path, "tensorrt-fp16")
    r = run_script("--model", str(model), "--root", str(root_with(tmp_path)), "--dry-run", *args)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_old_jetson_is_refused_with_the_reason(tmp_path):
    root = root_with(tmp_path, tegra=TEGRA_R36, model=b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    r = run_script("--model", str(model_dir(tmp_path, "onnx")), "--root", str(root), "--machine", "aarch64",
                   "--dry-run")
    assert r.returncode == 1 and "this Jetson runs L4T R36.4.0: flash JetPack 7" in r.stderr, r.stderr


def test_model_directory_problems(tmp_path):
    r = run_script("--model", str(tmp_path / "missing"), "--machine", "x86_64", "--dry-run")
    assert r.returncode == 1 and f"model directory {tmp_path / 'missing'} does not exist" in r.stderr
    (tmp_path / "plain").mkdir()
    r = run_script("--model", str(tmp_path / "plain"), "--machine", "x86_64", "--dry-run")
    assert r.returncode == 1 and "is not a model directory (no model.json)" in r.stderr


def test_no_engine_is_one_clear_message(tmp_path):
    r = run_script("--model", str(model_dir(tmp_path, "onnx")))
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith("error: no Docker engine answers at unix:///nonexistent/docker.sock")
    assert "Traceback" not in r.stderr
    r = run_script("--update")
    assert r.returncode == 1 and "no Docker engine answers" in r.stderr


def test_option_errors():
    for args in (["--model", "m", "--port", "70000"], [], ["--model", "m", "--timeout", "0"]):
        r = run_script(*args)
        assert r.returncode == 2 and "error:" in r.stderr, (args, r.stderr)


def test_pull_progress_lines_per_layer():
    # events as the engine streams them (POST /images/create)
    events = [{"status": "Pulling from defect/asset", "id": "x86-cpu-latest"},
              {"status": "Pulling fs layer", "progressDetail": {}, "id": "a1b2c3d4e5f6"},
              {"status": "Pulling fs layer", "progressDetail": {}, "id": "0f9e8d7c6b5a"},
              {"status": "Downloading", "progressDetail": {"current": 512, "total": 2048}, "id": "a1b2c3d4e5f6"},
              {"status": "Downloading", "progressDetail": {"current": 2048, "total": 2048}, "id": "a1b2c3d4e5f6"},
              {"status": "Download complete", "progressDetail": {}, "id": "a1b2c3d4e5f6"},
              {"status": "Pull complete", "progressDetail": {}, "id": "a1b2c3d4e5f6"},
              {"status": "Already exists", "progressDetail": {}, "id": "0f9e8d7c6b5a"},
              {"status": "Digest: sha256:" + "ab" * 32},
              {"status": "Status: Downloaded newer image for 127.0.0.1:5000/defect/asset:x86-cpu-latest"}]
    out = io.StringIO()
    progress = device.PullProgress(out)
    for e in events:
        progress.update(e)
    assert out.getvalue().splitlines() == [
        "x86-cpu-latest: Pulling from defect/asset", "  a1b2c3d4e5f6: Pulling fs layer",
        "  0f9e8d7c6b5a: Pulling fs layer", "  a1b2c3d4e5f6: Downloading", "  a1b2c3d4e5f6: Download complete",
        "  a1b2c3d4e5f6: Pull complete", "  0f9e8d7c6b5a: Already exists", "Digest: sha256:" + "ab" * 32,
        "Status: Downloaded newer image for 127.0.0.1:5000/defect/asset:x86-cpu-latest"]
    assert progress.layers["a1b2c3d4e5f6"] == "Pull complete"


def test_pull_progress_redraws_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    progress = device.PullProgress(out)
    progress.update({"status": "Downloading", "progressDetail": {"current": 1_000_000, "total": 4_000_000},
                     "id": "a1b2c3d4e5f6"})
    progress.update({"status": "Downloading", "progressDetail": {"current": 2_000_000, "total": 4_000_000},
                     "id": "a1b2c3d4e5f6"})
    text = out.getvalue()
    assert "Downloading  25.0% of 4.0 MB" in text and "Downloading  50.0% of 4.0 MB" in text
    assert "\x1b[1F" in text  # moved back up to redraw the layer's line
