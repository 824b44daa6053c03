"""The workflow in its containers, through docker-compose.yml: datatool -> datasets volume ->
asset train/export -> models volume -> the x86-CPU server, compared with the host's Predictor.

The steps are session fixtures (each runs once, in order, whichever test asks first), so a
failing step shows up in every test that needs it, with the step's own output."""

from __future__ import annotations

import json

import httpx
import numpy as np
from pycocotools import mask as coco_mask

from tests.containers.helpers import docker


def test_synthetic_datatool_writes_a_version_into_the_datasets_volume(project, synthetic_version, datatool_images):
    assert synthetic_version.startswith("/data/synthetic/")
    version = synthetic_version.rsplit("/", 1)[1]
    # `latest` is a relative link: it resolves inside any container that mounts the volume at any path.
    out = docker(project.env, "run", "--rm", "--network", "none", "-v", f"{project.volume('datasets')}:/elsewhere:ro",
                 "--entrypoint", "sh", datatool_images["synthetic"], "-c",
                 "readlink /elsewhere/synthetic/latest && datatool validate /elsewhere/synthetic/latest").stdout
    assert out.splitlines()[0] == version
    card = json.loads(docker(project.env, "run", "--rm", "--network", "none", "-v",
                             f"{project.volume('datasets')}:/data:ro", "--entrypoint", "cat",
                             datatool_images["synthetic"], f"/data/synthetic/{version}/dataset.json").stdout)
    assert card["schema"] == "defect-dataset/1" and card["version"] == version


def test_asset_trains_and_exports_in_its_container(project, trained_model, synthetic_version, asset_image, tmp_path):
    model = project.copy_out("models", trained_model, tmp_path, asset_image)
    card = json.loads((model / "model.json").read_text())
    # `latest` was resolved inside the container, to the version the datatool wrote.
    assert card["dataset"]["path"] == synthetic_version
    assert "onnx" in card["exports"] and (model / card["exports"]["onnx"]["file"]).is_file()
    assert (model / "SHA256SUMS").is_file()
    # Written by the image's non-root user.
    owner = docker(project.env, "run", "--rm", "--network", "none", "-v", f"{project.volume('models')}:/m:ro",
                   "--entrypoint", "stat", asset_image, "-c", "%u", f"/m/{trained_model}/model.json").stdout.strip()
    assert owner == "1000"


def test_served_mask_equals_the_host_predictor(project, serving, trained_model, datatool_images, tmp_path):
    from asset.predictor import Predictor

    model = project.copy_out("models", trained_model, tmp_path / "m", datatool_images["synthetic"])
    data = project.copy_out("datasets", "synthetic", tmp_path / "d", datatool_images["synthetic"])
    image = sorted(p for p in ((data / "latest").resolve() / "images").rglob("*") if p.is_file())[0]
    response = httpx.post(f"http://127.0.0.1:{project.port}/predict", files={"image": image.read_bytes()}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    served = coco_mask.decode({"size": answer["mask"]["size"], "counts": answer["mask"]["counts"].encode()})
    with Predictor(model, backend="onnxruntime") as predictor:
        host = predictor.predict_bytes(image.read_bytes())[0]
    assert served.shape == host.mask.shape
    assert np.array_equal(served.astype(bool), host.mask.astype(bool))
    assert answer["defective"] == bool(host.defective)


def test_server_container_runs_as_non_root_and_has_no_torch(project, serving):
    assert docker(project.env, "exec", serving, "id", "-u").stdout.strip() == "1000"
    probe = docker(project.env, "exec", serving, "python", "-c",
                   "import importlib.util as u; print(u.find_spec('torch') is None)").stdout.strip()
    assert probe == "True"


def test_x86_cpu_image_benchmarks_without_the_dataset(project, trained_model, x86_cpu_image):
    out = docker(project.env, "run", "--rm", "--network", "none", "-v", f"{project.volume('models')}:/models:ro",
                 "--entrypoint", "sh", x86_cpu_image, "-c",
                 f"asset benchmark --model /models/{trained_model} --speed-only --size 64x64 --min-iter 2 "
                 "--min-seconds 0.1 --out /tmp/x86-cpu >/dev/null && cat /tmp/x86-cpu.json").stdout
    report = json.loads(out)
    assert report["schema"] == "asset-benchmark-speed/1"
    assert any(row.get("backend") == "onnxruntime" and row.get("ms", 0) > 0 for row in report["rows"])


def test_serve_healthcheck_uses_readyz(project, serving):
    health = json.loads(docker(project.env, "inspect", "--format", "{{json .State.Health}}", serving).stdout)
    assert health["Status"] == "healthy"
    config = json.loads(docker(project.env, "inspect", "--format", "{{json .Config.Healthcheck}}", serving).stdout)
    assert "/readyz" in " ".join(config["Test"])
