"""ci/pipeline_bake.py: the bake file reader used where `docker buildx bake --print` is not available."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "ci"))
import pipeline_bake as bake  # noqa: E402

sys.path.pop(0)


def read(tmp_path, data, names=None, env=None):
    path = tmp_path / "docker-bake.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return {t.name: t for t in bake.read_bake_file(path, names, env or {})}


def test_the_projects_bake_file():
    targets = {t.name: t for t in bake.read_bake_file(REPO / "ci/docker-bake.json", env={})}
    platforms = sorted(p.name for p in (REPO / "platforms").iterdir() if p.is_dir())
    datasets = ["dagm", "kolektorsdd", "kolektorsdd2", "synthetic"]  # one datatool per dataset (README)
    assert set(targets) == {*platforms, *(f"datatool-{d}" for d in datasets)}
    for name in platforms:
        assert targets[name].dockerfile_path == f"platforms/{name}/Dockerfile"
        assert (REPO / targets[name].dockerfile_path).is_file()
    assert targets["rpi4"].platforms == ["linux/arm64"] and targets["jetson"].platforms == ["linux/arm64"]
    assert targets["x86-cpu"].tags == ["defect/asset:x86-cpu-dev"]
    assert targets["x86-cpu"].labels == {"org.opencontainers.image.source": "defect-detection"}
    assert targets["datatool-dagm"].args == {"DATASET": "dagm"}
    assert targets["datatool-dagm"].tags == ["defect/datatool-dagm:dev"]
    for name, target in targets.items():
        assert (REPO / target.dockerfile_path).is_file(), f"{name}: {target.dockerfile_path} is missing"


def test_variables_default_and_environment_override(tmp_path):
    data = {"variable": {"REGISTRY": {"default": "defect"}, "TAG": {"default": "dev"}},
            "target": {"a": {"tags": ["${REGISTRY}/asset:a-${TAG}", "plain", "$${x}"]}}}
    assert read(tmp_path, data, ["a"])["a"].tags == ["defect/asset:a-dev", "plain", "${x}"]
    assert read(tmp_path, data, ["a"], {"REGISTRY": "127.0.0.1:5000/x", "TAG": "abc"})["a"].tags == \
        ["127.0.0.1:5000/x/asset:a-abc", "plain", "${x}"]


def test_inherits_replaces_values_and_merges_maps(tmp_path):
    data = {"target": {
        "_common": {"context": ".", "labels": {"org.opencontainers.image.source": "x", "keep": "1"},
                    "args": {"BASE": "python:3.11-slim"}, "platforms": ["linux/amd64"]},
        "child": {"inherits": ["_common"], "labels": {"keep": "2"}, "platforms": ["linux/arm64"],
                  "target": "runtime"},
    }}
    child = read(tmp_path, data, ["child"])["child"]
    assert child.labels == {"org.opencontainers.image.source": "x", "keep": "2"}
    assert child.args == {"BASE": "python:3.11-slim"}
    assert child.platforms == ["linux/arm64"] and child.target == "runtime" and child.context == "."


def test_matrix_and_groups(tmp_path):
    data = {
        "variable": {"TAG": {"default": "dev"}},
        "group": {"default": {"targets": ["all"]}, "all": {"targets": ["tools", "single"]}},
        "target": {
            "single": {"dockerfile": "x/Dockerfile"},
            "tools": {"name": "tool-${t}", "matrix": {"t": ["a", "b"]}, "context": "tools",
                      "dockerfile": "Dockerfile", "args": {"DATASET": "${t}", "N": 3},
                      "tags": ["r/tool-${t}:${TAG}"]},
        },
    }
    targets = read(tmp_path, data)
    assert list(targets) == ["tool-a", "tool-b", "single"]
    assert targets["tool-b"].args == {"DATASET": "b", "N": "3"}
    assert targets["tool-b"].tags == ["r/tool-b:dev"] and targets["tool-b"].dockerfile_path == "tools/Dockerfile"
    assert list(read(tmp_path, data, ["tool-a"])) == ["tool-a"]
    assert list(read(tmp_path, data, ["tools"])) == ["tool-a", "tool-b"]


@pytest.mark.parametrize("data, message", [
    ({"target": {"a": {"tags": ["${upper(x)}"]}}}, "only ${name} interpolation"),
    ({"target": {"a": {"tags": ["${NOPE}"]}}}, "unknown variable ${NOPE}"),
    ({"target": {"a": {"shm-size": "1g", "secrets": ["x"]}}}, "secrets not understood"),
    ({"target": {"a": {"inherits": ["b"]}, "b": {"inherits": ["a"]}}}, "inherits loop"),
    ({"target": {"a": {}}, "function": {}}, "unsupported top-level key(s): function"),
    ('{"target": {"a": {"tags": ["x"]', "not valid JSON"),
])
def test_unsupported_or_wrong_input_is_refused_with_a_reason(tmp_path, data, message):
    with pytest.raises(bake.BakeError) as error:
        read(tmp_path, data, ["a"])
    assert message in str(error.value)


def test_unknown_target_lists_the_known_ones(tmp_path):
    with pytest.raises(bake.BakeError, match="unknown target 'c'; known: a, b"):
        read(tmp_path, {"target": {"a": {}, "b": {}}}, ["c"])


def test_resolve_uses_the_reader_without_buildx(tmp_path, monkeypatch):
    (tmp_path / "b.json").write_text(json.dumps({"target": {"a": {"platforms": ["linux/arm64"]}}}))
    monkeypatch.setattr(bake, "buildx_available", lambda docker="docker": False)
    assert [t.platforms for t in bake.resolve(tmp_path / "b.json", ["a"])] == [["linux/arm64"]]
