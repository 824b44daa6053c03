"""ci/pipeline_bake.py: the bake file reader used where `docker buildx bake --print` is not available."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "ci"))
import pipeline_bake as bake  # noqa: E402

sys.path.pop(0)


def read(tmp_path, text: str, names=None, env=None, suffix=".hcl"):
    path = tmp_path / f"docker-bake{suffix}"
    path.write_text(text)
    return {t.name: t for t in bake.read_bake_file(path, names, env or {})}


def test_the_projects_bake_file():
    targets = {t.name: t for t in bake.read_bake_file(REPO / "ci/docker-bake.hcl", env={})}
    platforms = sorted(p.name for p in (REPO / "platforms").iterdir() if p.is_dir())
    datasets = ["dagm", "kolektorsdd", "kolektorsdd2", "synthetic"]  # one datatool per dataset (README)
    assert set(targets) == {*platforms, *(f"datatool-{d}" for d in datasets)}
    for name in platforms:
        assert targets[name].dockerfile_path == f"platforms/{name}/Dockerfile"
        assert (REPO / targets[name].dockerfile_path).is_file()
    assert targets["rpi4"].platforms == ["linux/arm64"] and targets["jetson"].platforms == ["linux/arm64"]
    assert targets["x86-cpu"].tags == ["defect/asset:x86-cpu-dev"]
    for name, target in targets.items():
        assert (REPO / target.dockerfile_path).is_file(), f"{name}: {target.dockerfile_path} is missing"


def test_variables_default_and_environment_override(tmp_path):
    text = '''
variable "REGISTRY" { default = "defect" }
variable "TAG" { default = "dev" }
target "a" { tags = ["${REGISTRY}/asset:a-${TAG}", "plain"] }
'''
    assert read(tmp_path, text, ["a"])["a"].tags == ["defect/asset:a-dev", "plain"]
    assert read(tmp_path, text, ["a"], {"REGISTRY": "127.0.0.1:5000/x", "TAG": "abc"})["a"].tags == \
        ["127.0.0.1:5000/x/asset:a-abc", "plain"]


def test_inherits_replaces_values_and_merges_maps(tmp_path):
    text = '''
# comment
target "_common" {
  context = "."   // trailing comment
  labels = { "org.opencontainers.image.source" = "x", keep = "1" }
  args = { BASE = "python:3.11-slim" }
  platforms = ["linux/amd64"]
}
/* a block
   comment */
target "child" {
  inherits = ["_common"]
  labels = { keep = "2" }
  platforms = ["linux/arm64"]
  target = "runtime"
}
'''
    child = read(tmp_path, text, ["child"])["child"]
    assert child.labels == {"org.opencontainers.image.source": "x", "keep": "2"}
    assert child.args == {"BASE": "python:3.11-slim"}
    assert child.platforms == ["linux/arm64"] and child.target == "runtime" and child.context == "."


def test_matrix_and_groups(tmp_path):
    text = '''
variable "TAG" { default = "dev" }
group "default" { targets = ["all"] }
group "all" { targets = ["tools", "single"] }
target "single" { dockerfile = "x/Dockerfile" }
target "tools" {
  name = "tool-${t}"
  matrix = { t = ["a", "b"] }
  context = "tools"
  dockerfile = "Dockerfile"
  args = { DATASET = t, N = 3 }
  tags = ["r/tool-${t}:${TAG}"]
}
'''
    targets = read(tmp_path, text)
    assert list(targets) == ["tool-a", "tool-b", "single"]
    assert targets["tool-b"].args == {"DATASET": "b", "N": "3"}
    assert targets["tool-b"].tags == ["r/tool-b:dev"] and targets["tool-b"].dockerfile_path == "tools/Dockerfile"
    assert list(read(tmp_path, text, ["tool-a"])) == ["tool-a"]
    assert list(read(tmp_path, text, ["tools"])) == ["tool-a", "tool-b"]


def test_json_form_reads_like_hcl(tmp_path):
    text = 'variable "R" { default = "r" }\ntarget "a" {\n  tags = ["${R}/a:$${x}"]\n  platforms = ["linux/amd64"]\n}\n'
    hcl = read(tmp_path, text, ["a"])
    data = {"variable": {"R": {"default": "r"}}, "target": {"a": {"tags": ["${R}/a:$${x}"], "platforms": ["linux/amd64"]}}}
    js = read(tmp_path, json.dumps(data), ["a"], suffix=".json")
    assert hcl == js and js["a"].tags == ["r/a:${x}"]


@pytest.mark.parametrize("text, message", [
    ('target "a" {\n  tags = [upper("x")]\n}\n', "line 2"),
    ('target "a" {\n  tags = ["${upper(x)}"]\n}\n', "only ${name} interpolation"),
    ('variable "X" { default = 1 }\ntarget "a" {\n  context = X == 1 ? "a" : "b"\n}\n', "line 3"),
    ('target "a" {\n  dockerfile-inline = <<EOT\nFROM x\nEOT\n}\n', "heredoc"),
    ('target "a" {\n  tags = ["${NOPE}"]\n}\n', "unknown variable ${NOPE}"),
    ('target "a" {\n  shm-size = "1g"\n  secrets = ["x"]\n}\n', "secrets not understood"),
    ('target "a" { inherits = ["b"] }\ntarget "b" { inherits = ["a"] }\n', "inherits loop"),
    ('target "a" {\n  tags = ["x"\n', "missing"),
])
def test_unsupported_or_wrong_input_is_refused_with_a_reason(tmp_path, text, message):
    with pytest.raises(bake.BakeError) as error:
        read(tmp_path, text, ["a"])
    assert message in str(error.value)


def test_unknown_target_lists_the_known_ones(tmp_path):
    with pytest.raises(bake.BakeError, match="unknown target 'c'; known: a, b"):
        read(tmp_path, 'target "a" {}\ntarget "b" {}\n', ["c"])


def test_resolve_uses_the_reader_without_buildx(tmp_path, monkeypatch):
    (tmp_path / "b.hcl").write_text('target "a" { platforms = ["linux/arm64"] }\n')
    monkeypatch.setattr(bake, "buildx_available", lambda docker="docker": False)
    assert [t.platforms for t in bake.resolve(tmp_path / "b.hcl", ["a"])] == [["linux/arm64"]]
