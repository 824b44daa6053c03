"""The arm64 images, built and run on x86-64 under QEMU: Raspberry Pi 4 serves the ONNX model;
the Jetson Dockerfile's own steps build on a Python stand-in base, and every requirement of the
Jetson image has an aarch64 wheel for JetPack 7's Python (3.12)."""

from __future__ import annotations

import json
import time

import cv2
import httpx
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from tests.containers.conftest import TAG
from tests.containers.helpers import REPO, build, docker, free_port, release_wheels, wheelhouse, wheels_image

JETSON_REQUIREMENTS = ["platforms/jetson/requirements.lock"]  # hash-locked (ci/lock.py)


def test_rpi4_image_runs_emulated(docker_env, rpi4_image):
    assert docker(docker_env, "image", "inspect", "--format", "{{.Architecture}}", rpi4_image).stdout.strip() == "arm64"
    out = docker(docker_env, "run", "--rm", "--network", "none", "--platform", "linux/arm64", "--entrypoint", "sh",
                 rpi4_image, "-c", "uname -m && asset --version && id -u").stdout.split("\n")
    assert out[0] == "aarch64" and out[1].startswith("asset ") and out[2] == "1000"


@pytest.fixture(scope="session")
def rpi4_onnxruntime(docker_env, rpi4_image) -> None:
    """onnxruntime imports in the emulated image: without it the serving tests fail at once, saying why.

    Measured here: onnxruntime 1.32's aarch64 wheel segfaults on import under Debian bookworm's
    qemu-user-static 7.2 (whatever QEMU_CPU), so these tests fail on such a host; on real arm64
    hardware or a newer QEMU they run."""
    probe = docker(docker_env, "run", "--rm", "--network", "none", "--platform", "linux/arm64", "--entrypoint",
                   "python", rpi4_image, "-c", "import onnxruntime; print(onnxruntime.__version__)", check=False,
                   timeout=600)
    if probe.returncode != 0:
        pytest.fail(f"onnxruntime does not import in {rpi4_image} under QEMU (exit {probe.returncode}): "
                    f"{(probe.stdout + probe.stderr).strip()[-500:]}", pytrace=False)


def test_rpi4_image_serves_the_onnx_model(project, trained_model, rpi4_image, rpi4_onnxruntime, tmp_path):
    from asset.predictor import Predictor

    port = free_port()
    cid = docker(project.env, "run", "-d", "--network", "host", "--platform", "linux/arm64",
                 "-e", "ASSET_HOST=127.0.0.1", "-e", f"ASSET_PORT={port}",
                 "-v", f"{project.volume('models')}:/models:ro", rpi4_image,
                 "serve", "--model", f"/models/{trained_model}").stdout.strip()
    try:
        deadline = time.monotonic() + 300  # emulated start-up: imports and the first model load are slow
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert docker(project.env, "inspect", "--format", "{{.State.Running}}", cid).stdout.strip() == "true", \
                docker(project.env, "logs", cid, check=False).stderr[-3000:]
            time.sleep(2)
        image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
        png = cv2.imencode(".png", image)[1].tobytes()
        response = httpx.post(f"http://127.0.0.1:{port}/predict", files={"image": png}, timeout=120)
        assert response.status_code == 200, response.text
        mask = response.json()["mask"]
        served = coco_mask.decode({"size": mask["size"], "counts": mask["counts"].encode()})
        model = project.copy_out("models", trained_model, tmp_path, rpi4_image)
        with Predictor(model, backend="onnxruntime") as predictor:
            host = predictor.predict_bytes(png)[0]
        assert np.array_equal(served.astype(bool), host.mask.astype(bool))
    finally:
        docker(project.env, "rm", "-f", cid, check=False)


def test_jetson_dockerfile_builds_for_arm64_on_a_stand_in(docker_env, base_arm64, built):
    """The L4T base cannot be pulled here: its Dockerfile's steps run on the arm64 Python stand-in,
    without JetPack's apt packages (TensorRT bindings), from an aarch64 wheelhouse."""
    if not (REPO / "platforms/jetson/requirements-jetson.txt").is_file():
        pytest.fail("platforms/jetson/requirements-jetson.txt is missing")
    wheels = wheels_image(docker_env, "jetson", JETSON_REQUIREMENTS, platform="linux/arm64")
    tag = f"defect/asset:jetson-standin-{TAG}"
    seconds = build(docker_env, "platforms/jetson/Dockerfile", tag, platform="linux/arm64", base=base_arm64,
                    wheels=wheels, args={"APT_PACKAGES": ""})
    built[tag] = f"built in {seconds:.0f} s (stand-in base, no TensorRT)"
    release_wheels(docker_env, wheels)
    out = docker(docker_env, "run", "--rm", "--network", "none", "--platform", "linux/arm64", "--entrypoint", "sh",
                 tag, "-c", "uname -m && asset --version && python3 -c \"import importlib.metadata as m; "
                 "print(m.version('cuda-python'), m.version('onnxruntime'))\"").stdout.split("\n")
    assert out[0] == "aarch64" and out[1].startswith("asset ")
    assert out[2].split()[0] == _pin("cuda-python")


def test_every_jetson_requirement_has_an_aarch64_wheel_for_jetpack_python():
    """JetPack 7 (L4T r38) is Ubuntu 24.04 with Python 3.12: pip download --only-binary for it."""
    folder = wheelhouse.download("linux/arm64", "3.12", [REPO / r for r in JETSON_REQUIREMENTS])
    names = {p.name.split("-")[0].lower().replace("_", "-") for p in folder.glob("*.whl")}
    for requirement in ("numpy", "onnxruntime", "opencv-python-headless", "pycocotools", "cuda-python", "uvloop"):
        assert requirement in names
    assert not [p for p in folder.glob("*.whl") if "x86_64" in p.name]


def _pin(name: str) -> str:
    for line in (REPO / "platforms/jetson/requirements-jetson.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in requirements-jetson.txt")


def test_rpi4_image_benchmarks_without_the_dataset(project, trained_model, rpi4_image, rpi4_onnxruntime):
    """The device's figures without the training dataset (emulated here, so only the run is checked)."""
    out = docker(project.env, "run", "--rm", "--network", "none", "--platform", "linux/arm64",
                 "-v", f"{project.volume('models')}:/models:ro", "--entrypoint", "sh", rpi4_image, "-c",
                 f"asset benchmark --model /models/{trained_model} --speed-only --size 64x64 --min-iter 2 "
                 "--min-seconds 0.1 --out /tmp/rpi4 >/dev/null && cat /tmp/rpi4.json").stdout
    report = json.loads(out)
    assert report["schema"] == "asset-benchmark-speed/1"
    assert any(row["backend"] == "onnxruntime" and row["status"] == "ok" for row in report["rows"])
