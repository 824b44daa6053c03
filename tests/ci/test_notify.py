"""ci/notify.py against a real SMTP server on loopback: plain, STARTTLS + login, implicit TLS, and each failure."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest

from .smtp_helpers import PASSWORD, USER, Inbox, authenticator, clean_env, free_port, make_tls, run_notify, start_server

RUN = ["--commit", "0123456789abcdef0123456789abcdef01234567", "--branch", "main", "--url", "https://ci.example/runs/42"]


@pytest.fixture
def failing_log(tmp_path):
    log = tmp_path / "build-rpi4-arm64.log"
    log.write_text("".join(f"step {i}\n" for i in range(1, 201)) + "error: pip could not find onnxruntime\n")
    return log


def mail_env(port: int, **extra: str) -> dict[str, str]:
    return clean_env(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), NOTIFY_FROM="ci@example.org",
                     NOTIFY_TO="alice@example.org, bob@example.org", **extra)


def received(inbox: Inbox):
    assert len(inbox.envelopes) == 1, f"expected one mail, got {len(inbox.envelopes)}"
    envelope = inbox.envelopes[0]
    # A long Subject is folded right after "Subject:"; readers unfold it with a leading space.
    return envelope, message_from_bytes(envelope.original_content, policy=policy.default)


def test_plain_smtp_delivers_subject_recipients_body_and_log_tail(failing_log):
    inbox = Inbox()
    server = start_server(inbox)
    try:
        result = run_notify(mail_env(server.port, SMTP_SECURITY="none"),
                            "--job", "build-rpi4-arm64", "--log", str(failing_log), "--lines", "5", *RUN)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert "mail sent to alice@example.org, bob@example.org" in result.stdout
    envelope, mail = received(inbox)
    assert envelope.mail_from == "ci@example.org"
    assert envelope.rcpt_tos == ["alice@example.org", "bob@example.org"]
    assert mail["Subject"].strip() == "[defect-detection] pipeline failed: build-rpi4-arm64 on main (0123456789ab)"
    assert mail["To"] == "alice@example.org, bob@example.org"
    body = mail.get_content()
    for line in ("Failed job(s): build-rpi4-arm64", "Commit: 0123456789abcdef0123456789abcdef01234567",
                 "Branch: main", "Run: https://ci.example/runs/42"):
        assert line in body
    lines = body.splitlines()
    start = lines.index(f"== build-rpi4-arm64: last 5 lines of {failing_log} ==") + 1
    assert lines[start:] == ["step 197", "step 198", "step 199", "step 200", "error: pip could not find onnxruntime"]
    assert "step 196" not in body


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_with_login(tmp_path, failing_log, mechanism):
    tls = make_tls(tmp_path)
    inbox = Inbox()
    excluded = [m for m in ("PLAIN", "LOGIN") if m != mechanism]
    server = start_server(inbox, tls_context=tls.server_context, require_starttls=True, auth_required=True,
                          auth_require_tls=True, authenticator=authenticator(inbox), auth_exclude_mechanism=excluded)
    try:
        result = run_notify(mail_env(server.port, SMTP_SECURITY="starttls", SMTP_USER=USER, SMTP_PASSWORD=PASSWORD,
                                     SMTP_CA_FILE=str(tls.ca_file)),
                            "--job", "unit", "--log", str(failing_log), *RUN)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert inbox.logins == [mechanism]
    _, mail = received(inbox)
    assert mail["Subject"].strip().startswith("[defect-detection] pipeline failed: unit on main")
    assert "error: pip could not find onnxruntime" in mail.get_content()


def test_implicit_tls(tmp_path, failing_log):
    tls = make_tls(tmp_path)
    inbox = Inbox()
    server = start_server(inbox, ssl_context=tls.server_context)
    try:
        result = run_notify(mail_env(server.port, SMTP_SECURITY="tls", SMTP_CA_FILE=str(tls.ca_file)),
                            "--job", "lint", "--log", str(failing_log), *RUN)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    received(inbox)


def test_refused_login_is_a_clear_delivery_error(tmp_path, failing_log):
    tls = make_tls(tmp_path)
    inbox = Inbox()
    server = start_server(inbox, tls_context=tls.server_context, auth_required=True,
                          authenticator=authenticator(inbox))
    try:
        result = run_notify(mail_env(server.port, SMTP_USER=USER, SMTP_PASSWORD="wrong",
                                     SMTP_CA_FILE=str(tls.ca_file)), "--job", "unit", "--log", str(failing_log), *RUN)
    finally:
        server.stop()
    assert result.returncode == 3
    assert f"refused the login of '{USER}'" in result.stderr and "535" in result.stderr
    assert inbox.envelopes == []


def test_unreachable_server():
    result = run_notify(mail_env(free_port(), SMTP_SECURITY="none"), "--job", "unit", *RUN)
    assert result.returncode == 3
    assert "cannot reach the SMTP server 127.0.0.1:" in result.stderr and "refused" in result.stderr.lower()


def test_untrusted_certificate_says_how_to_trust_it(tmp_path):
    tls = make_tls(tmp_path)
    server = start_server(Inbox(), tls_context=tls.server_context)
    try:
        result = run_notify(mail_env(server.port), "--job", "unit", *RUN)  # starttls, system CAs only
    finally:
        server.stop()
    assert result.returncode == 3
    assert "TLS with 127.0.0.1" in result.stderr and "SMTP_CA_FILE" in result.stderr


def test_starttls_against_a_server_without_tls():
    server = start_server(Inbox())
    try:
        result = run_notify(mail_env(server.port, SMTP_SECURITY="starttls"), "--job", "unit", *RUN)
    finally:
        server.stop()
    assert result.returncode == 3
    assert "does not support" in result.stderr and "SMTP_SECURITY=starttls" in result.stderr


def test_missing_settings_are_listed_together():
    result = run_notify(clean_env(SMTP_USER="someone"), "--job", "unit", *RUN)
    assert result.returncode == 2
    for name in ("SMTP_HOST", "NOTIFY_FROM", "NOTIFY_TO", "SMTP_PASSWORD"):
        assert name in result.stderr


@pytest.mark.parametrize("setting, message", [({"SMTP_SECURITY": "ssl"}, "SMTP_SECURITY='ssl'"),
                                              ({"SMTP_PORT": "smtp"}, "SMTP_PORT='smtp'"),
                                              ({"SMTP_CA_FILE": "/nonexistent/ca.pem"}, "no such file"),
                                              ({"NOTIFY_TO": " , "}, "NOTIFY_TO holds no address")])
def test_wrong_settings(setting, message):
    env = mail_env(25)
    env.update(setting)
    result = run_notify(env, "--job", "unit", *RUN)
    assert result.returncode == 2 and message in result.stderr


def test_missing_log_still_sends_a_mail_that_says_so(tmp_path):
    inbox = Inbox()
    server = start_server(inbox)
    try:
        result = run_notify(mail_env(server.port, SMTP_SECURITY="none"), "--job", "push-x86-cpu-amd64",
                            "--log", str(tmp_path / "gone.log"), *RUN)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    _, mail = received(inbox)
    assert "could not be read: No such file or directory" in mail.get_content()


def test_run_details_come_from_github_or_gitlab_environment(tmp_path):
    github = clean_env(SMTP_HOST="h", NOTIFY_FROM="a@b", NOTIFY_TO="c@d", GITHUB_RUN_ID="77", GITHUB_SHA="f" * 40,
                       GITHUB_REF_NAME="feature/x", GITHUB_SERVER_URL="https://github.com", GITHUB_REPOSITORY="o/r")
    out = run_notify(github, "--job", "lint", "--dry-run").stdout
    assert "Run: https://github.com/o/r/actions/runs/77" in out and "Branch: feature/x" in out and "f" * 40 in out
    gitlab = clean_env(SMTP_HOST="h", NOTIFY_FROM="a@b", NOTIFY_TO="c@d", CI_PIPELINE_URL="https://gl/p/9",
                       CI_COMMIT_SHA="e" * 40, CI_COMMIT_REF_NAME="main")
    out = run_notify(gitlab, "--job", "lint", "--dry-run").stdout
    assert "Run: https://gl/p/9" in out and "Branch: main" in out and "e" * 40 in out


def test_empty_values_count_as_unset(tmp_path, failing_log):
    """GitHub Actions passes an undefined secret as "": SMTP_SECURITY="" is the default (STARTTLS), an empty
    SMTP_USER / SMTP_PASSWORD means no login, and the mail is sent (was: SMTP_SECURITY='' refused, exit 2)."""
    tls = make_tls(tmp_path)
    inbox = Inbox()
    server = start_server(inbox, tls_context=tls.server_context, require_starttls=True)
    try:
        env = mail_env(server.port, SMTP_SECURITY="", SMTP_USER="", SMTP_PASSWORD="", SMTP_CA_FILE=str(tls.ca_file),
                       GITHUB_RUN_ID="77", GITHUB_SHA="", GITHUB_REF_NAME=" ", GITHUB_SERVER_URL="",
                       GITHUB_REPOSITORY="o/r")
        result = run_notify(env, "--job", "unit", "--log", str(failing_log))
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert inbox.logins == []
    _, mail = received(inbox)
    body = mail.get_content()
    assert "Run: https://github.com/o/r/actions/runs/77" in body and "Commit: unknown" in body
    assert "Branch: unknown" in body


def test_a_password_is_never_sent_in_plain_text_beyond_loopback():
    env = clean_env(SMTP_HOST="smtp.example.org", SMTP_PORT=str(free_port()), SMTP_SECURITY="none",
                    SMTP_USER=USER, SMTP_PASSWORD=PASSWORD, NOTIFY_FROM="ci@example.org", NOTIFY_TO="a@example.org")
    result = run_notify(env, "--job", "unit", *RUN)
    assert result.returncode == 2
    assert "SMTP_SECURITY=none with SMTP_USER set would send the password to smtp.example.org" in result.stderr


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd's, for this very case
def test_plain_login_to_a_loopback_relay_is_allowed(failing_log):
    inbox = Inbox()
    server = start_server(inbox, auth_required=True, auth_require_tls=False, authenticator=authenticator(inbox))
    try:
        result = run_notify(mail_env(server.port, SMTP_SECURITY="none", SMTP_USER=USER, SMTP_PASSWORD=PASSWORD),
                            "--job", "unit", "--log", str(failing_log), *RUN)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert inbox.logins and received(inbox)
