"""Static checks of the Dockerfiles, compose files and CI entry (the images themselves are built and
run by tests/containers, `make test-containers`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO

BIN = Path(sys.executable).parent
DOCKERFILES = [
    *sorted(REPO.glob("platforms/*/Dockerfile")),
    REPO / "datatools/Dockerfile",
    REPO / "asset/Dockerfile",
]


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: run `make setup` (it is pinned in requirements-dev.txt)")
    return str(path)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_lints_clean(dockerfile):
    # DL3008/DL3013: apt/pip pins come from the requirements files, not the Dockerfile lines.
    result = subprocess.run([tool("hadolint"), "--ignore", "DL3008", "--ignore", "DL3013", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_copies_exist_and_ends_with_usage(dockerfile):
    text = dockerfile.read_text()
    context = REPO / "datatools" if dockerfile.is_relative_to(REPO / "datatools") else REPO
    for line in text.splitlines():
        match = re.match(r"^COPY\s+(?!--)(.+)\s+\S+$", line)
        if match:
            for source in match.group(1).split():
                assert (context / source).exists(), f"{dockerfile}: COPY source {source} missing in {context}"
    assert "Usage" in text.split("\n# Usage")[-1] or "usage" in text.lower()


PINNED_PYTHON = "python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b"
PUBLIC_BASES = {"asset/Dockerfile": PINNED_PYTHON, "datatools/Dockerfile": PINNED_PYTHON,
                "platforms/x86-cpu/Dockerfile": PINNED_PYTHON, "platforms/x86-cuda/Dockerfile": PINNED_PYTHON,
                "platforms/rpi4/Dockerfile": PINNED_PYTHON,
                "platforms/jetson/Dockerfile": "nvcr.io/nvidia/l4t-jetpack:"}
# Dockerfile -> the hash lock it installs (ci/lock.py); x86-cuda has none (tensorrt-cu12: NVIDIA's own index)
LOCKS = {"asset/Dockerfile": "asset/requirements.lock", "datatools/Dockerfile": "/src/datatools/requirements.lock",
         "platforms/x86-cpu/Dockerfile": "platforms/x86-cpu/requirements.lock",
         "platforms/rpi4/Dockerfile": "platforms/rpi4/requirements.lock",
         "platforms/jetson/Dockerfile": "platforms/jetson/requirements.lock"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_base_is_pinned_by_digest_and_requirements_by_hash(dockerfile):
    """A public base is pulled by digest (a moved tag cannot change the image), every wheel is installed with
    --require-hashes from the image's lock; our own packages without fetching a build backend. The exceptions
    say why in the Dockerfile."""
    text = dockerfile.read_text()
    rel = str(dockerfile.relative_to(REPO))
    base = re.search(r"^ARG BASE=(\S+)$", text, re.M)[1]
    if rel == "platforms/jetson/Dockerfile":
        assert "not pinned by digest" in text
    else:
        assert re.fullmatch(r"[\w.:/-]+@sha256:[0-9a-f]{64}", base), base
    instructions = re.sub(r"\\\n", " ", text).splitlines()
    installs = [line for line in instructions if line.startswith("RUN") and "pip install" in line]
    if rel == "platforms/x86-cuda/Dockerfile":
        assert "Not hash-locked" in text
        return
    requirements = [r for run in installs for r in re.findall(r"-r (\S+)", run)]
    assert requirements == [LOCKS[rel]], requirements
    for run in installs:
        for command in run.split("&&"):
            if "pip install" in command:
                assert ("--require-hashes" in command) != ("--no-deps" in command and "--no-build-isolation" in command), \
                    f"an install neither hash-checked nor of our own package alone: {command}"


def test_compose_builds_from_the_dockerfiles_pinned_base():
    text = (REPO / "docker-compose.yml").read_text()
    assert f'x-base: &base "${{BASE:-{PINNED_PYTHON}}}"' in text
    assert "python:3.11-slim\"" not in text and text.count("BASE: *base") == 6


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_base_and_wheelhouse_are_build_args(dockerfile):
    """The public base is the default (stand-ins only through --build-arg), offline wheels optional."""
    text = dockerfile.read_text()
    default = PUBLIC_BASES[str(dockerfile.relative_to(REPO))]
    assert re.search(rf"^ARG BASE={re.escape(default)}", text, re.M), "ARG BASE=<public image> missing"
    assert re.search(r"^ARG WHEELS=scratch$", text, re.M) and "FROM ${WHEELS} AS wheels" in text
    assert "FROM ${BASE}" in text
    instructions = re.sub(r"\\\n", " ", text).splitlines()
    installs = [line for line in instructions if line.startswith("RUN") and "pip install" in line]
    assert installs
    for run in installs:
        assert run.startswith("RUN --mount=type=bind,from=wheels,target=/wheels"), run
        assert run.count("pip install") == run.count('"$@"'), f"a pip install without the wheelhouse: {run}"


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]],
                         ids=["compose", "compose+gpu"])
def test_compose_files_match_the_spec_and_resolve(files):
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             *[str(REPO / f) for f in files]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = shutil.which("docker-compose")
    if not compose:
        # not a CI failure: make test runs before ci/engine.py installs it, and make test-containers runs compose for real
        pytest.skip("docker-compose (1.29) is not installed: python3 ci/engine.py install")
    args = [arg for f in files for arg in ("-f", str(REPO / f))]
    result = subprocess.run([compose, *args, "config", "-q"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    services = subprocess.run([compose, *args, "config", "--services"], capture_output=True, text=True,
                              cwd=REPO).stdout.split()
    assert sorted(services) == sorted(["asset", "serve", *[f"datatool-{d}" for d in DATASETS]])


DATASETS = ["dagm", "kolektorsdd", "kolektorsdd2", "synthetic"]


def test_one_datatool_dockerfile_one_target_and_service_per_dataset():
    assert not list(REPO.glob("datatools/*/Dockerfile")), "the per-dataset Dockerfiles are one, with ARG DATASET"
    assert "ARG DATASET" in (REPO / "datatools/Dockerfile").read_text()
    compose = (REPO / "docker-compose.yml").read_text()
    datatools = json.loads((REPO / "ci/docker-bake.json").read_text())["target"]["datatools"]
    makefile = (REPO / "Makefile").read_text()
    assert datatools["args"] == {"DATASET": "${tool}"}
    for dataset in DATASETS:
        assert f"datatool-{dataset}:" in compose and f"DATASET: {dataset}" in compose
        assert dataset in datatools["matrix"]["tool"]
        assert f"image-datatool-{dataset}" in makefile


def test_workflow_matches_the_schema():
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             str(REPO / ".github/workflows/platforms.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bake_has_a_target_per_platform():
    targets = json.loads((REPO / "ci/docker-bake.json").read_text())["target"]
    for platform in (p.name for p in REPO.glob("platforms/*") if p.is_dir()):
        assert targets[platform]["dockerfile"] == f"platforms/{platform}/Dockerfile"
    for arm in ("jetson", "rpi4"):
        assert targets[arm]["platforms"] == ["linux/arm64"]


def test_ci_entry_runs_make_test_then_the_container_tests():
    text = (REPO / ".ci/run").read_text()
    assert text.index("make test\n") < text.index("make test-containers")
