"""deploy/k8s: every overlay renders (kustomize through kubectl when installed, and the Python renderer, which must
agree with it) and validates offline against the vendored strict schemas; the manifests say what the issue asks
(probes, non-root, read-only root, the key from a Secret, the model read-only, HPA on CPU and on the queue depth
the server really exports, PDB, ServiceMonitor) and agree with each other and with the image."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys

import pytest
import yaml

from tests import unavailable
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/cpu", "overlays/gpu", "overlays/cpu-model-image"]


def _check_module():
    spec = importlib.util.spec_from_file_location("k8s_check", K8S / "check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["k8s_check"] = mod
    spec.loader.exec_module(mod)
    return mod


check = _check_module()


def _by_kind(objs: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objs}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: check.render_python(K8S / name) for name in OVERLAYS}


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_validates_against_vendored_schemas(rendered, name):
    assert check.validate(rendered[name]) == []


@pytest.mark.parametrize("name", OVERLAYS)
def test_python_renderer_equals_kustomize(rendered, name):
    if check.kustomize_command() is None:
        unavailable("no kustomize or kubectl on PATH: the Python renderer alone was checked (see deploy/k8s/README.md)")
    key = check._ident
    assert sorted(check.render_kustomize(K8S / name), key=key) == sorted(rendered[name], key=key)


def test_cli_reports_every_overlay_valid(capsys):
    assert check.main(["--renderer", "python", *(str(K8S / n) for n in OVERLAYS)]) == 0
    out = capsys.readouterr().out
    assert out.count("valid:") == len(OVERLAYS) and "INVALID" not in out


def test_validator_is_strict(rendered):
    """An unknown field, a wrong type, a missing required field and a kind without a schema are all errors."""
    objs = copy.deepcopy(rendered["overlays/cpu"])
    dep = _by_kind(objs)["Deployment"]
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo'd field
    dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = "1000"  # wrong type
    del _by_kind(objs)["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]  # required
    _by_kind(objs)["ServiceMonitor"]["spec"]["endpoints"][0]["intervall"] = "15s"  # CRD schema is strict too
    objs.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    errors = "\n".join(check.validate(objs))
    assert "readinesProbe" in errors
    assert "runAsUser" in errors and "'1000'" in errors
    assert "maxReplicas" in errors
    assert "intervall" in errors
    assert "no schema for example.com/v1/Widget" in errors


def test_python_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(check.CheckError, match="namePrefix not supported"):
        check.render_python(tmp_path)


def test_deployment_as_the_issue_asks(rendered):
    objs = _by_kind(rendered["overlays/cpu"])
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "defect/asset:latest-x86-cpu"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the uid is the image's own non-root user
    dockerfile = (REPO / "platforms" / "x86-cpu" / "Dockerfile").read_text()
    assert re.search(rf"^USER {pod['securityContext']['runAsUser']}$", dockerfile, re.M)
    env = {e["name"]: e for e in c["env"]}
    assert env["ASSET_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "api-key"
    assert env["ASSET_MODEL"]["value"] == "/models/model" and env["ASSET_HOST"]["value"] == "0.0.0.0"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["model"]["readOnly"] is True and mounts["model"]["mountPath"] == "/models/model"
    assert "tmp" in mounts  # the one writable place
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"]["claimName"] == objs["PersistentVolumeClaim"]["metadata"]["name"]
    # the probes and the Service aim at the port the server listens on
    port = int(env["ASSET_PORT"]["value"])
    assert c["ports"][0]["containerPort"] == port and c["ports"][0]["name"] == "http"


def test_model_image_overlay_mounts_an_oci_image_and_drops_the_claim(rendered):
    objs = _by_kind(rendered["overlays/cpu-model-image"])
    assert "PersistentVolumeClaim" not in objs
    volumes = {v["name"]: v for v in objs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert set(volumes["model"]) == {"name", "image"} and volumes["model"]["image"]["reference"]


def test_gpu_overlay(rendered):
    pod = _by_kind(rendered["overlays/gpu"])["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"].endswith(":latest-x86-cuda")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["ASSET_BACKEND"] == "tensorrt" and env["ASSET_DEVICE"] == "cuda"
    assert "ASSET_API_KEY" in env and env["ASSET_MODEL"] == "/models/model"  # merged, not replaced
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_selectors_and_names_agree(rendered):
    for name in OVERLAYS:
        objs = _by_kind(rendered[name])
        dep = objs["Deployment"]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert objs["Service"]["spec"]["selector"].items() <= pod_labels.items()
        assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        svc_labels = objs["Service"]["metadata"]["labels"]
        sm = objs["ServiceMonitor"]["spec"]
        assert sm["selector"]["matchLabels"].items() <= svc_labels.items()
        assert sm["endpoints"][0]["port"] in {p["name"] for p in objs["Service"]["spec"]["ports"]}
        assert sm["endpoints"][0]["path"] == "/metrics"
        ref = objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]
        hpa = objs["HorizontalPodAutoscaler"]["spec"]
        assert hpa["minReplicas"] > objs["PodDisruptionBudget"]["spec"]["minAvailable"] or name == "overlays/gpu"


def test_hpa_scales_on_cpu_and_on_the_queue_depth_the_server_exports(rendered):
    from asset.serve.metrics import ServerMetrics

    exported = {m.name for m in ServerMetrics().registry.collect()}
    metrics = _by_kind(rendered["overlays/cpu"])["HorizontalPodAutoscaler"]["spec"]["metrics"]
    kinds = {m["type"]: m for m in metrics}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    queue = kinds["Pods"]["pods"]["metric"]["name"]
    assert queue == "asset_queue_depth" and queue in exported
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["seriesQuery"].startswith(queue + "{") and rule["name"]["as"] == queue
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
