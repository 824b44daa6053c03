"""scripts/device.py against a real engine: the x86-CPU image, built from its Dockerfile (session fixture), is
pushed to a loopback registry; the program pulls it from there, starts the server on a model directory and waits
until it is ready; /predict answers as the host's Predictor does; --update swaps in a newer image keeping the model
mount, and a broken newer image leaves the previous container running. The image benchmarks speed without the
dataset. Then the bad inputs that need an engine: a registry that does not answer, an image of the wrong
architecture, a model without an ONNX export, a server that never becomes ready; nothing is left started."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.containers.helpers import REPO, docker

SCRIPT = REPO / "scripts" / "device.py"
NAME = "defect-device-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--name", NAME, "--network", "host", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def containers(env: dict) -> list[str]:
    out = docker(env, "ps", "-a", "--filter", f"name={NAME}", "--format", "{{.Names}}").stdout
    return sorted(out.split())


def inspect(env: dict, what: str) -> dict:
    return json.loads(docker(env, "inspect", what).stdout)[0]


def readable_copy(src: Path, dst: Path) -> Path:
    """The model as the container's user (uid 1000) can read it."""
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def derived(env: dict, base: str, tag: str, lines: str) -> None:
    """A small image on top of `base` (classic builder, no network), pushed as `tag`."""
    docker({**env, "DOCKER_BUILDKIT": "0"}, "build", "--network", "none", "-t", tag, "-",
           input=f"FROM {base}\n{lines}\n")
    docker(env, "push", tag)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tests' exported MobileNetV2-Unet (onnx, onnx-int8, openvino), its card completed as `asset train`
    writes it (the server needs the training size)."""
    from asset import modeldir
    from tests.asset.backend_helpers import shared

    m = readable_copy(shared()["model"], tmp_path_factory.mktemp("device") / "demo")
    card = modeldir.verify(m)
    card["input"]["train_size"] = [32, 32]  # the tiny dataset's image size
    modeldir.write_card(m, card)
    for p in m.iterdir():
        p.chmod(0o755 if p.is_dir() else 0o644)
    return m


@pytest.fixture(scope="module")
def pushed(docker_env, registry, x86_cpu_image):
    """REGISTRY/defect/asset:x86-cpu-t1: the x86-cpu image (built from its Dockerfile by the session fixture) plus
    one small layer that is then removed here, so that the program really downloads a layer from the registry."""
    namespace = f"{registry}/defect"
    derived(docker_env, x86_cpu_image, f"{namespace}/asset:x86-cpu-t1", "RUN echo t1 > /tmp/device-test")
    docker(docker_env, "rmi", f"{namespace}/asset:x86-cpu-t1")
    yield namespace
    for name in containers(docker_env):
        docker(docker_env, "rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def port():
    return free_port()


def test_pull_start_and_predict(docker_env, pushed, model, port):
    r = device(docker_env, "--model", str(model), "--registry", pushed, "--tag", "t1", "--port", str(port))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "device:    x86-64 without an NVIDIA container runtime" in r.stdout
    assert f"pulling {pushed}/asset:x86-cpu-t1" in r.stdout
    assert ": Pull complete" in r.stdout  # per-layer progress from the pull stream
    assert f"ready: http://127.0.0.1:{port}/" in r.stdout
    c = inspect(docker_env, NAME)
    assert c["State"]["Running"] and c["Config"]["User"] == "1000"
    assert c["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    (mount,) = c["Mounts"]
    assert (mount["Source"], mount["Destination"], mount["RW"]) == (str(model), "/models/model", False)

    from asset.predictor import Predictor
    from tests.asset.backend_helpers import shared
    from tests.asset.serve_helpers import split_images

    image = split_images(shared()["dataset"], "test")[0][2]
    answer = httpx.post(f"http://127.0.0.1:{port}/predict", content=image, headers={"content-type": "image/png"},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    with Predictor(model, "onnxruntime", threads=1) as p:
        (expected,) = p.predict_bytes(image)
    got = answer.json()
    assert got["defective"] == expected.defective and got["model"]["backend"] == "onnxruntime"
    assert abs(got["defect_fraction"] - expected.defect_fraction) < 1e-6


def test_the_image_benchmarks_speed_without_the_dataset(docker_env, pushed, model, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    out.chmod(0o777)  # the image's user (uid 1000) writes there
    docker(docker_env, "run", "--rm", "--network", "none", "-v", f"{model}:/models/model:ro", "-v", f"{out}:/out",
           f"{pushed}/asset:x86-cpu-t1", "benchmark", "--model", "/models/model", "--speed-only", "--size", "64x64",
           "--batch", "1,2", "--min-iter", "3", "--min-seconds", "0.1", "--out", "/out/x86-cpu")
    doc = json.loads((out / "x86-cpu.json").read_text())
    assert doc["schema"] == "asset-benchmark-speed/1" and doc["input"]["size"] == [64, 64]
    assert doc["device"]["description"] and "torch" not in doc["machine"]["versions"]
    by = {(r["backend"], r["precision"], r["batch"]): r for r in doc["rows"]}
    for key in (("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2), ("onnxruntime", "int8", 1),
                ("openvino", "fp32", 1)):
        assert by[key]["status"] == "ok" and by[key]["ms"] > 0 and by[key]["fps"] > 0, by[key]
    assert by[("pytorch", "fp32", 1)]["status"] == "unavailable"  # no torch in the edge image


def test_a_second_start_is_refused(docker_env, pushed, model, port):
    r = device(docker_env, "--model", str(model), "--registry", pushed, "--tag", "t1", "--port", str(port))
    assert r.returncode == 1 and f"a container named {NAME} exists already" in r.stderr, r.stderr


def test_update_swaps_the_image_and_keeps_the_mount(docker_env, pushed, model, port):
    before = inspect(docker_env, NAME)
    derived(docker_env, f"{pushed}/asset:x86-cpu-t1", f"{pushed}/asset:x86-cpu-t1", "LABEL revision=2")
    r = device(docker_env, "--update", "--registry", pushed, "--tag", "t1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"replaced {NAME}" in r.stdout and f"ready: http://127.0.0.1:{port}/" in r.stdout
    after = inspect(docker_env, NAME)
    assert after["Id"] != before["Id"] and after["Image"] != before["Image"]
    assert after["Config"]["Labels"]["revision"] == "2" and after["State"]["Running"]
    assert after["Mounts"] == before["Mounts"]  # the same model, read-only, at the same place
    assert containers(docker_env) == [NAME]  # the previous one is gone
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    again = device(docker_env, "--update", "--registry", pushed, "--tag", "t1")
    assert again.returncode == 0 and "already runs the newest" in again.stdout, again.stderr


def test_a_broken_update_puts_the_previous_container_back(docker_env, pushed, port):
    before = inspect(docker_env, NAME)
    derived(docker_env, f"{pushed}/asset:x86-cpu-t1", f"{pushed}/asset:x86-cpu-t2",
            'ENTRYPOINT ["sh", "-c", "echo this image is broken; exit 3"]')
    r = device(docker_env, "--update", "--registry", pushed, "--tag", "t2", "--timeout", "60")
    assert r.returncode == 1, r.stdout
    assert "this image is broken" in r.stderr and "the previous container runs again" in r.stderr
    assert containers(docker_env) == [NAME]
    back = inspect(docker_env, NAME)
    assert back["Id"] == before["Id"] and back["State"]["Running"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        pytest.fail("the previous container did not become ready again")


def test_bad_input_that_needs_an_engine(docker_env, registry, pushed, model, tmp_path):
    other = ["--name", f"{NAME}-bad", "--port", str(free_port())]
    closed = free_port()  # nothing listens there
    r = device(docker_env, "--model", str(model), "--registry", f"127.0.0.1:{closed}/defect", "--tag", "t1", *other)
    assert r.returncode == 1 and f"the registry 127.0.0.1:{closed} does not answer" in r.stderr, r.stderr

    arm = f"{pushed}/asset:x86-cpu-arm64"  # an arm64 build pushed under the x86-cpu tag
    context = tmp_path / "arm"
    context.mkdir()
    (context / "hello").write_text("an arm64 image\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello /hello\n")
    docker({**docker_env, "DOCKER_BUILDKIT": "0"}, "build", "--platform", "linux/arm64", "-t", arm, str(context))
    docker(docker_env, "push", arm)
    docker(docker_env, "rmi", arm)
    r = device(docker_env, "--model", str(model), "--registry", pushed, "--tag", "arm64", *other)
    assert r.returncode == 1, r.stdout
    assert f"{arm} is a linux/arm64 image and this engine runs linux/amd64" in r.stderr
    assert docker(docker_env, "image", "inspect", arm, check=False).returncode != 0  # not left behind

    r = device(docker_env, "--model", str(model), "--registry", pushed, "--tag", "nope", *other)
    assert r.returncode == 1 and f"{pushed}/asset:x86-cpu-nope is not in the registry" in r.stderr, r.stderr

    from asset import modeldir

    no_onnx = readable_copy(model, tmp_path / "no-onnx")
    card = modeldir.verify(no_onnx)
    card["exports"] = {k: v for k, v in card["exports"].items() if k == "openvino"}
    modeldir.write_card(no_onnx, card)
    r = device(docker_env, "--model", str(no_onnx), "--registry", pushed, "--tag", "t1", *other)
    assert r.returncode == 1 and "has no export the x86-cpu image can run" in r.stderr, r.stderr
    assert containers(docker_env) == [NAME]  # none of these started anything


def test_a_server_that_never_becomes_ready_is_removed(docker_env, pushed, model, tmp_path):
    broken = readable_copy(model, tmp_path / "broken")
    (broken / "exports" / "model.onnx").write_bytes(b"not an ONNX model")  # the checksums no longer match
    r = device(docker_env, "--model", str(broken), "--registry", pushed, "--tag", "t1", "--name", f"{NAME}-broken",
               "--port", str(free_port()), "--timeout", "60")
    assert r.returncode == 1, r.stdout
    assert "the server container stopped" in r.stderr and "checksums do not match" in r.stderr
    assert containers(docker_env) == [NAME]


def test_no_engine(model):
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    r = device(env, "--model", str(model))
    assert r.returncode == 1 and "no Docker engine answers at unix:///nonexistent/docker.sock" in r.stderr
