"""The hash locks hold in a real build: a wheelhouse whose wheel differs from what the lock names (same name and
version, other bytes: a tampered mirror or cache) fails the image build at pip's hash check."""

from __future__ import annotations

import shutil
import zipfile

from tests import REPO
from tests.containers.helpers import DOCKER, docker, run, wheelhouse


def test_a_wheel_other_than_the_locked_one_fails_the_build(docker_env, base_amd64, tmp_path):
    folder = wheelhouse.download("linux/amd64", "3.11", [REPO / "datatools/requirements.lock"])
    house = tmp_path / "wheels"
    shutil.copytree(folder, house)
    tqdm = next(house.glob("tqdm-*.whl"))
    with zipfile.ZipFile(tqdm, "a") as z:  # still a valid wheel, but not the file PyPI published
        z.writestr("tqdm/injected.py", "print('not what the lock names')\n")
    tag = "defect-ci/wheels:tampered"
    wheelhouse.pack(house, tag, docker_env)
    try:
        result = run([DOCKER, "build", "--network", "none", "-f", "Dockerfile", "-t", "defect/datatool-tampered:ci",
                      "--build-arg", f"BASE={base_amd64}", "--build-arg", f"WHEELS={tag}", "."],
                     {**docker_env, "DOCKER_BUILDKIT": "1"}, cwd=REPO / "datatools", check=False)
        assert result.returncode != 0, "a wheel that differs from the lock was installed"
        output = result.stdout + result.stderr
        assert "DO NOT MATCH THE HASHES" in output and "tqdm" in output, output[-3000:]
    finally:
        docker(docker_env, "rmi", "-f", tag, "defect/datatool-tampered:ci", check=False)
