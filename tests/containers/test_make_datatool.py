"""`make datatool-dagm RAW=...` runs the datatool-dagm container when an engine answers, and says
so and converts with the host's Python when none does."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.containers.conftest import TAG
from tests.containers.helpers import DOCKER, REPO, run
from tests.datatools.rawfixtures import write_dagm_full


def make(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run(["make", "--no-print-directory", *args, f"DOCKER={DOCKER}", f"TAG={TAG}", "ARGS=--workers 1"],
               env, cwd=REPO, timeout=900)


def test_make_datatool_dagm_runs_its_container(docker_env, datatool_images, tmp_path):
    info = write_dagm_full(tmp_path / "raw")
    out = tmp_path / "data"
    result = make(docker_env, "datatool-dagm", f"RAW={tmp_path / 'raw'}", f"OUT={out}")
    assert f"in its container ({datatool_images['dagm']})" in result.stdout
    # The version directory is printed as the container sees it: proof the conversion ran inside.
    assert result.stdout.strip().splitlines()[-1].startswith("/data/dagm/")
    card = json.loads((out / "dagm/latest/dataset.json").read_text())
    assert len(card["samples"]) == len(info.ids)
    assert (out / "dagm/latest").stat().st_uid == os.getuid()  # --user: the caller owns the files


def test_make_datatool_dagm_without_an_engine_says_so_and_runs_natively(tmp_path):
    if subprocess.run(["make", "-q", ".venv/.installed"], cwd=REPO).returncode != 0:
        pytest.skip("the .venv is older than the requirements: the native path would reinstall it")
    write_dagm_full(tmp_path / "raw")
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    result = make(env, "datatool-dagm", f"RAW={tmp_path / 'raw'}", f"OUT={tmp_path / 'data'}")
    assert "note: no Docker engine answers" in result.stdout
    assert (tmp_path / "data/dagm/latest/dataset.json").is_file()


def test_make_datatool_dagm_refuses_a_missing_raw_folder(tmp_path):
    result = subprocess.run(["make", "--no-print-directory", "datatool-dagm", f"RAW={tmp_path / 'nope'}"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "is not a folder" in result.stderr
