"""Static checks of what cannot be built here (no Docker engine): Dockerfiles, compose, CI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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


def test_compose_file_matches_the_spec():
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(REPO / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_matches_the_schema():
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             str(REPO / ".github/workflows/platforms.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bake_has_a_target_per_platform():
    bake = (REPO / "ci/docker-bake.hcl").read_text()
    for platform in (p.name for p in REPO.glob("platforms/*") if p.is_dir()):
        assert f'target "{platform}"' in bake
        assert f"platforms/{platform}/Dockerfile" in bake
    for arm in ("jetson", "rpi4"):
        block = bake.split(f'target "{arm}"')[1].split("}")[0]
        assert '"linux/arm64"' in block


def test_ci_entry_runs_make_test():
    assert "make test" in (REPO / ".ci/run").read_text()
