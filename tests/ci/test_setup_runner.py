"""ci/setup-runner.sh --dry-run: every step printed, nothing changed, the CPU-only and GPU paths, tokens masked.
(Its binfmt and builder steps run for real, twice, in tests/containers/test_pipeline.py.)"""

from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO

STEPS = ["packages", "engine", "gpu", "binfmt", "builder", "register"]


def setup_runner(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITLAB_", "GITHUB_", "RUNNER_"))}
    base.update(RUNNER_ETC=str(tmp_path / "etc"), NVIDIA_PROC=str(tmp_path / "no-driver"), RUNNER_NAME="gpu-box-1")
    base.update(env)
    return subprocess.run(["bash", str(REPO / "ci/setup-runner.sh"), *args], env=base, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    result = setup_runner(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("== step ")] == STEPS
    assert "dry run: nothing is changed" in out
    assert "no NVIDIA driver" in out and "CPU-only runner" in out
    assert "no runner token given" in out
    assert not (tmp_path / "etc").exists()  # the builder step would write its env file, the dry run does not
    assert out.rstrip().splitlines()[-1].startswith("setup-runner: ")


def test_dry_run_with_an_nvidia_driver_plans_the_container_toolkit(tmp_path):
    driver = tmp_path / "version"
    driver.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05\n")
    out = setup_runner(tmp_path, "--dry-run", "--only", "gpu", NVIDIA_PROC=str(driver)).stdout
    assert "NVIDIA driver: NVRM version" in out
    assert "nvidia-container-toolkit" in out and "would run: nvidia-ctk runtime configure --runtime=docker" in out
    assert "CPU-only" not in out


def test_gitlab_registration_is_planned_with_the_token_masked(tmp_path):
    result = setup_runner(tmp_path, "--dry-run", "--only", "register", GITLAB_URL="https://gitlab.example",
                          GITLAB_RUNNER_TOKEN="glrt-VERY-SECRET")
    assert result.returncode == 0, result.stderr
    assert "glrt-VERY-SECRET" not in result.stdout + result.stderr
    assert "would run: gitlab-runner register --non-interactive --url https://gitlab.example --token *** " \
           "--executor shell --name gpu-box-1" in result.stdout


def test_github_registration_needs_the_runner_checksum(tmp_path):
    missing = setup_runner(tmp_path, "--dry-run", "--only", "register", GITHUB_URL="https://github.com/o/r",
                           GITHUB_RUNNER_TOKEN="AAAA-SECRET")
    assert missing.returncode != 0 and "GITHUB_RUNNER_SHA256 must be set" in missing.stderr
    driver = tmp_path / "version"
    driver.write_text("NVRM version: 580\n")
    planned = setup_runner(tmp_path, "--dry-run", "--only", "register", GITHUB_URL="https://github.com/o/r",
                           GITHUB_RUNNER_TOKEN="AAAA-SECRET", GITHUB_RUNNER_SHA256="ab" * 32, NVIDIA_PROC=str(driver))
    assert planned.returncode == 0, planned.stderr
    assert "AAAA-SECRET" not in planned.stdout
    assert "sha256sum -c" in planned.stdout and "--labels self-hosted,linux,defect-detection,gpu" in planned.stdout


def test_bad_options_are_refused(tmp_path):
    assert setup_runner(tmp_path, "--dry-run", "--only", "docker").returncode == 2
    bad = setup_runner(tmp_path, "--force")
    assert bad.returncode == 2 and "unknown option --force" in bad.stderr
