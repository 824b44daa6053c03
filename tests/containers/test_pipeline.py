"""The pipeline on one machine (ci/run-local.sh) with the real engine and a loopback registry: build, test in
the image, push, pull back by digest; and ci/setup-runner.sh's binfmt and builder steps run twice for real."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.containers.helpers import REPO, docker, run

UNITS = ["x86-cpu-amd64", "datatool-synthetic-amd64"]


def test_run_local_builds_tests_pushes_and_the_pushed_images_pull_back_by_digest(tmp_path, docker_env, registry,
                                                                                   base_amd64):
    out = tmp_path / "ci"
    env = {**docker_env, "PIPELINE_OUT": str(out), "PIPELINE_BUILDER": "docker"}
    for name in ("SMTP_HOST", "NOTIFY_TO", "REGISTRY", "PIPELINE_COMMIT"):
        env.pop(name, None)
    result = run(["bash", "ci/run-local.sh", "--stages", "images", "--units", ",".join(UNITS),
                  "--registry", f"{registry}/defect", "--offline"], env, timeout=3600, check=False, cwd=REPO)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    for unit in UNITS:
        for stage in ("build", "test", "push"):
            assert (out / "status" / f"{stage}-{unit}").read_text() == "0\n"
        record = json.loads((out / "pushed" / f"{unit}.json").read_text())
        commit_tag, latest_tag = record["tags"]
        assert commit_tag.startswith(f"{registry}/defect/") and latest_tag.rsplit(":", 1)[1].startswith("latest-")
        # Forget the local image, then pull it back from the registry by digest: the same image (config digest).
        docker(env, "rmi", commit_tag, latest_tag)
        docker(env, "pull", record["digest"])
        pulled = docker(env, "image", "inspect", "--format", "{{.Id}}", record["digest"]).stdout.strip()
        assert pulled == record["image_id"]
        docker(env, "pull", latest_tag)
        digests = json.loads(docker(env, "image", "inspect", "--format", "{{json .RepoDigests}}", latest_tag).stdout)
        assert record["digest"] in digests
    assert "x86-cpu" in json.loads((out / "pushed/x86-cpu-amd64.json").read_text())["tags"][1]


def test_setup_runner_binfmt_and_builder_steps_are_idempotent(tmp_path, docker_env, arm64):
    env = {**docker_env, "RUNNER_ETC": str(tmp_path / "etc")}
    command = ["bash", "ci/setup-runner.sh", "--only", "binfmt,builder"]
    first = run(command, env, cwd=REPO)
    env_file = tmp_path / "etc/env"
    assert env_file.is_file(), first.stdout
    written = (env_file.read_text(), env_file.stat().st_mtime_ns)
    second = run(command, env, cwd=REPO)
    assert "setup-runner: 0 change(s), " in second.stdout, second.stdout
    assert "+ " not in second.stdout  # no command ran
    assert (env_file.read_text(), env_file.stat().st_mtime_ns) == written
    assert Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text().splitlines()[0] == "enabled"
    assert os.access(REPO / "ci/setup-runner.sh", os.X_OK)
