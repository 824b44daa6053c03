"""ci/pipeline.py and ci/run-local.sh without a Docker engine: recorded stages, one mail for the failed ones
through a real SMTP server on loopback, the pipeline's own status kept whatever the mail step does."""

from __future__ import annotations

import subprocess
import sys
from email import message_from_bytes, policy

import pytest

from tests import REPO

from .smtp_helpers import Inbox, clean_env, free_port, start_server

sys.path.insert(0, str(REPO / "ci"))
import pipeline  # noqa: E402

sys.path.pop(0)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def inbox():
    box = Inbox()
    server = start_server(box)
    yield box, server.port
    server.stop()


def env_for(out, port: int | None = None, **extra: str) -> dict[str, str]:
    env = clean_env(PIPELINE_OUT=str(out), PIPELINE_COMMIT=COMMIT, PIPELINE_BRANCH="main",
                    PIPELINE_URL="https://ci.example/run/5", PIPELINE_BUILDER="docker", **extra)
    if port is not None:
        env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), SMTP_SECURITY="none", NOTIFY_FROM="ci@example.org",
                   NOTIFY_TO="team@example.org")
    return env


def pipeline_cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "ci/pipeline.py"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_stage_records_log_and_status_and_returns_the_stage_status(tmp_path):
    env = env_for(tmp_path)
    result = pipeline_cli(env, "stage", "build-x", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7")
    assert result.returncode == 7
    assert "to-out" in result.stdout and "to-err" in result.stdout and "FAILED (exit 7)" in result.stdout
    assert (tmp_path / "status/build-x").read_text() == "7\n"
    log = (tmp_path / "logs/build-x.log").read_text()
    assert "to-out\n" in log and "to-err\n" in log
    assert pipeline_cli(env, "stage", "ok", "--", "true").returncode == 0
    assert (tmp_path / "status/ok").read_text() == "0\n"
    missing = pipeline_cli(env, "stage", "gone", "--", "/nonexistent/tool")
    assert missing.returncode == 127 and "cannot start /nonexistent/tool" in missing.stdout


def test_a_failing_stage_gives_exactly_one_mail_naming_only_it(tmp_path, inbox):
    box, port = inbox
    env = env_for(tmp_path, port)
    assert pipeline_cli(env, "stage", "lint", "--", "true").returncode == 0
    failing = pipeline_cli(env, "stage", "test-rpi4-arm64", "--", "sh", "-c",
                           "for i in $(seq 1 80); do echo line $i; done; echo 'AssertionError: torch must not ship'; exit 1")
    assert failing.returncode == 1
    sent = pipeline_cli(env, "notify", "--lines", "10")
    assert sent.returncode == 0, sent.stderr
    assert len(box.envelopes) == 1
    mail = message_from_bytes(box.envelopes[0].original_content, policy=policy.default)
    assert mail["Subject"].strip() == "[defect-detection] pipeline failed: test-rpi4-arm64 on main (0123456789ab)"
    body = mail.get_content()
    assert "Failed job(s): test-rpi4-arm64\n" in body.replace("\r\n", "\n") and "Run: https://ci.example/run/5" in body
    assert "AssertionError: torch must not ship" in body and "line 72" in body and "line 71" not in body
    assert box.envelopes[0].rcpt_tos == ["team@example.org"]


def test_nothing_failed_means_no_mail_even_without_settings(tmp_path):
    env = env_for(tmp_path)  # no SMTP settings at all: a green pipeline stays green
    assert pipeline_cli(env, "stage", "unit", "--", "true").returncode == 0
    result = pipeline_cli(env, "notify")
    assert result.returncode == 0 and "nothing to send" in result.stdout


def test_an_unsendable_mail_is_reported_by_the_notify_step(tmp_path):
    env = env_for(tmp_path, free_port())  # nothing listens there
    pipeline_cli(env, "stage", "unit", "--", "false")
    result = pipeline_cli(env, "notify")
    assert result.returncode == 3 and "cannot reach the SMTP server" in result.stderr


def test_push_refuses_an_image_whose_tests_did_not_pass(tmp_path):
    env = env_for(tmp_path)
    result = pipeline_cli(env, "push", "x86-cpu-amd64")
    assert result.returncode == 2 and "its test stage did not run" in result.stdout
    pipeline_cli(env, "stage", "test-x86-cpu-amd64", "--", "false")
    result = pipeline_cli(env, "push", "x86-cpu-amd64")
    assert result.returncode == 2 and "its test stage failed (exit 1)" in result.stdout


def test_units_and_their_tags(monkeypatch):
    monkeypatch.setenv("PIPELINE_BUILDER", "docker")
    monkeypatch.setenv("REGISTRY", "Ghcr.io/Some-Owner")
    units = {u.id: u for u in pipeline.units()}
    assert {"x86-cpu-amd64", "x86-cuda-amd64", "jetson-arm64", "rpi4-arm64", "datatool-synthetic-amd64",
            "datatool-synthetic-arm64"} <= set(units)
    cpu, tool = units["x86-cpu-amd64"], units["datatool-synthetic-arm64"]
    assert cpu.commit_tag(COMMIT) == f"ghcr.io/some-owner/asset:x86-cpu-{COMMIT}"
    assert cpu.latest_tag() == "ghcr.io/some-owner/asset:latest-x86-cpu"
    assert tool.commit_tag(COMMIT) == f"ghcr.io/some-owner/datatool-synthetic:arm64-{COMMIT}"
    assert tool.latest_tag() == "ghcr.io/some-owner/datatool-synthetic:latest-arm64"
    assert units["rpi4-arm64"].platform == "linux/arm64"


def test_units_only_filter_refuses_unknown_ids(tmp_path):
    env = env_for(tmp_path)
    ok = pipeline_cli(env, "units", "--only", "x86-cpu-amd64,rpi4-arm64", "--output", str(tmp_path / "u.txt"))
    assert ok.returncode == 0 and (tmp_path / "u.txt").read_text() == \
        "x86-cpu-amd64 x86-cpu linux/amd64\nrpi4-arm64 rpi4 linux/arm64\n"
    bad = pipeline_cli(env, "units", "--only", "rpi5-arm64")
    assert bad.returncode == 2 and "unknown unit(s) rpi5-arm64; known: x86-cuda-amd64" in bad.stderr


def run_local(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "ci/run-local.sh"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_run_local_failing_plan_sends_one_mail_and_keeps_its_status(tmp_path, inbox):
    box, port = inbox
    result = run_local(env_for(tmp_path / "a", port), "--stages", "images", "--targets", "no-such-target")
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(box.envelopes) == 1
    body = message_from_bytes(box.envelopes[0].original_content, policy=policy.default).get_content()
    assert "Failed job(s): plan" in body and "unknown target 'no-such-target'" in body
    # The same failure with a mail server that does not answer: still exit 1, and the mail step says why.
    unsent = run_local(env_for(tmp_path / "b", free_port()), "--stages", "images", "--targets", "no-such-target")
    assert unsent.returncode == 1 and "cannot reach the SMTP server" in unsent.stderr
    assert "the pipeline's status is kept" in unsent.stderr


def test_run_local_refuses_unknown_options_and_stages(tmp_path):
    assert run_local(env_for(tmp_path), "--stage", "x").returncode == 2
    bad = run_local(env_for(tmp_path), "--stages", "lint,deploy")
    assert bad.returncode == 2 and "unknown stage deploy" in bad.stderr


def test_a_failure_outside_the_recorded_stages_still_gives_one_mail(tmp_path, inbox):
    box, port = inbox
    env = env_for(tmp_path, port)
    pipeline_cli(env, "stage", "lint", "--", "true")
    result = pipeline_cli(env, "notify", "--pipeline-failed")
    assert result.returncode == 0, result.stderr
    assert len(box.envelopes) == 1
    body = message_from_bytes(box.envelopes[0].original_content, policy=policy.default).get_content()
    assert "a step outside the recorded stages (see the run)" in body and "(no log was recorded)" in body
