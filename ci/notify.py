"""E-mail the maintainers that a pipeline job failed: which job, commit, branch, run link and log tail.

Standard library only (CI runners have a bare python3). Settings come from the environment:

    SMTP_HOST       mail server (required)
    SMTP_PORT       default 587 for starttls, 465 for tls, 25 for none
    SMTP_SECURITY   starttls (default) | tls (implicit TLS) | none (plain text: no password sent,
                    except to a loopback host, e.g. a local relay)
    SMTP_USER       log in as this user (optional; then SMTP_PASSWORD is required)
    SMTP_PASSWORD
    SMTP_CA_FILE    PEM bundle to trust instead of the system's (a relay with a private CA)
    NOTIFY_FROM     sender address (required)
    NOTIFY_TO       recipients, comma separated (required)

    python3 ci/notify.py --job build-rpi4-arm64 --log out/ci/logs/build-rpi4-arm64.log
    python3 ci/notify.py --job unit --log unit.log --commit abc123 --branch main --url https://ci/run/7 --dry-run

A variable set to an empty (or blank) value counts as unset: GitHub Actions passes a secret that is not
defined as "", so `SMTP_SECURITY: ${{ secrets.SMTP_SECURITY }}` without that secret means the default.
Commit, branch and run link default to what GitHub Actions or GitLab CI put in the environment.
Exit status: 0 sent (or printed with --dry-run), 2 a setting or argument is missing or wrong,
3 the server could not be reached or refused the mail. The caller decides what that means for the
pipeline: ci/pipeline.py keeps the pipeline's own status whatever this returns.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import smtplib
import socket
import ssl
import sys
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
EXIT_CONFIG = 2
EXIT_DELIVERY = 3


class NotifyError(Exception):
    """A problem the user can fix, with the exit status it maps to."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    security: str
    user: str | None
    password: str | None
    ca_file: str | None
    sender: str
    recipients: list[str]


@dataclass(frozen=True)
class Failure:
    """One failed job and the log that shows why."""

    job: str
    log: Path | None


@dataclass(frozen=True)
class RunInfo:
    commit: str
    branch: str
    url: str


def _get(env, name: str, default: str | None = None) -> str | None:
    """The variable's value, stripped; `default` when it is unset, empty or blank (CI systems pass unset secrets
    as empty strings)."""
    value = (env.get(name) or "").strip()
    return value or default


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1), where plain SMTP never leaves the machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_from_env(env: dict[str, str] | os._Environ = os.environ) -> Settings:
    """Read and check every setting at once, so one message lists all that is missing."""
    missing = [name for name in ("SMTP_HOST", "NOTIFY_FROM", "NOTIFY_TO") if not _get(env, name)]
    user = _get(env, "SMTP_USER")
    password = env.get("SMTP_PASSWORD") or None  # not stripped: a password may hold spaces
    if user and not password:
        missing.append("SMTP_PASSWORD (SMTP_USER is set)")
    if missing:
        raise NotifyError(f"missing mail setting(s): {', '.join(missing)} (see ci/notify.py --help)", EXIT_CONFIG)
    security = _get(env, "SMTP_SECURITY", "starttls").lower()
    if security not in DEFAULT_PORTS:
        raise NotifyError(f"SMTP_SECURITY={security!r}: use one of {', '.join(DEFAULT_PORTS)}", EXIT_CONFIG)
    port_text = _get(env, "SMTP_PORT", str(DEFAULT_PORTS[security]))
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise NotifyError(f"SMTP_PORT={port_text!r} is not a port number", EXIT_CONFIG)
    host = _get(env, "SMTP_HOST")
    if security == "none" and user and not is_loopback(host):
        raise NotifyError(f"SMTP_SECURITY=none with SMTP_USER set would send the password to {host} in plain text: "
                          "use starttls or tls (or a relay on this machine, SMTP_HOST=127.0.0.1)", EXIT_CONFIG)
    ca_file = _get(env, "SMTP_CA_FILE")
    if ca_file and not Path(ca_file).is_file():
        raise NotifyError(f"SMTP_CA_FILE={ca_file}: no such file", EXIT_CONFIG)
    recipients = [r.strip() for r in _get(env, "NOTIFY_TO").split(",") if r.strip()]
    if not recipients:
        raise NotifyError("NOTIFY_TO holds no address", EXIT_CONFIG)
    return Settings(host, int(port_text), security, user, password if user else None,
                    ca_file, _get(env, "NOTIFY_FROM"), recipients)


def run_info_from_env(env: dict[str, str] | os._Environ = os.environ) -> RunInfo:
    """Commit, branch and run link as GitHub Actions or GitLab CI set them; 'unknown' elsewhere."""
    if _get(env, "GITHUB_RUN_ID"):
        url = f"{_get(env, 'GITHUB_SERVER_URL', 'https://github.com')}/{_get(env, 'GITHUB_REPOSITORY', '')}" \
              f"/actions/runs/{_get(env, 'GITHUB_RUN_ID')}"
        return RunInfo(_get(env, "GITHUB_SHA", "unknown"), _get(env, "GITHUB_REF_NAME", "unknown"), url)
    if _get(env, "CI_PIPELINE_URL"):
        return RunInfo(_get(env, "CI_COMMIT_SHA", "unknown"), _get(env, "CI_COMMIT_REF_NAME", "unknown"),
                       _get(env, "CI_PIPELINE_URL"))
    return RunInfo(_get(env, "PIPELINE_COMMIT", "unknown"), _get(env, "PIPELINE_BRANCH", "unknown"),
                   _get(env, "PIPELINE_URL", "(run locally, no link)"))


def log_tail(path: Path | None, lines: int) -> str:
    """The last lines of a log, or a note saying why there is none (a missing log must not stop the mail)."""
    if path is None:
        return "(no log was recorded)"
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip("\n") or "(the log is empty)"
    except OSError as error:
        return f"(log {path} could not be read: {error.strerror})"


def build_message(failures: list[Failure], run: RunInfo, settings: Settings, lines: int,
                  project: str = "defect-detection") -> EmailMessage:
    jobs = ", ".join(f.job for f in failures)
    message = EmailMessage()
    message["Subject"] = f"[{project}] pipeline failed: {jobs} on {run.branch} ({run.commit[:12]})"
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.recipients)
    parts = [
        f"The {project} pipeline failed.",
        "",
        f"Failed job(s): {jobs}",
        f"Commit: {run.commit}",
        f"Branch: {run.branch}",
        f"Run: {run.url}",
    ]
    for failure in failures:
        parts += ["", f"== {failure.job}: last {lines} lines of {failure.log or 'its log'} ==",
                  log_tail(failure.log, lines)]
    message.set_content("\n".join(parts) + "\n")
    return message


def _tls_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.ca_file)


def send(message: EmailMessage, settings: Settings, timeout: float = 30.0) -> None:
    """Deliver over SMTP; every failure becomes a NotifyError that says what to check."""
    where = f"{settings.host}:{settings.port}"
    try:
        if settings.security == "tls":
            client = smtplib.SMTP_SSL(settings.host, settings.port, timeout=timeout, context=_tls_context(settings))
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=timeout)
        with client:
            if settings.security == "starttls":
                client.starttls(context=_tls_context(settings))
            if settings.user:
                client.login(settings.user, settings.password or "")
            client.send_message(message)
    except smtplib.SMTPAuthenticationError as error:
        raise NotifyError(f"the SMTP server {where} refused the login of {settings.user!r}: "
                          f"{error.smtp_code} {_text(error.smtp_error)}", EXIT_DELIVERY) from error
    except smtplib.SMTPNotSupportedError as error:
        raise NotifyError(f"the SMTP server {where} does not support this: {error} "
                          f"(check SMTP_SECURITY={settings.security} and SMTP_USER)", EXIT_DELIVERY) from error
    except smtplib.SMTPRecipientsRefused as error:
        refused = ", ".join(f"{r} ({code} {_text(text)})" for r, (code, text) in error.recipients.items())
        raise NotifyError(f"the SMTP server {where} refused the recipient(s): {refused}", EXIT_DELIVERY) from error
    except smtplib.SMTPResponseException as error:
        raise NotifyError(f"the SMTP server {where} answered {error.smtp_code} {_text(error.smtp_error)}",
                          EXIT_DELIVERY) from error
    except ssl.SSLError as error:
        raise NotifyError(f"TLS with {where} failed: {error.reason or error} "
                          "(a private CA? set SMTP_CA_FILE; implicit TLS or STARTTLS? check SMTP_SECURITY)",
                          EXIT_DELIVERY) from error
    except (smtplib.SMTPException, OSError) as error:  # refused, unreachable, timeout, DNS, dropped connection
        reason = "timed out" if isinstance(error, socket.timeout) else (error.strerror or str(error) or type(error).__name__)
        raise NotifyError(f"cannot reach the SMTP server {where}: {reason}", EXIT_DELIVERY) from error


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def notify(failures: list[Failure], run: RunInfo, lines: int = 50, dry_run: bool = False,
           env: dict[str, str] | os._Environ = os.environ) -> int:
    """Compose and send one mail for these failures; print a one-line outcome. Returns the exit status."""
    try:
        settings = settings_from_env(env)
        message = build_message(failures, run, settings, lines)
        if dry_run:
            print(message)
            return 0
        send(message, settings)
    except NotifyError as error:
        print(f"notify: error: {error}", file=sys.stderr)
        return error.status
    print(f"notify: mail sent to {', '.join(settings.recipients)} via {settings.host}:{settings.port}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", action="append", required=True, help="the failed job's name (repeatable)")
    parser.add_argument("--log", action="append", default=[], help="its log file (repeatable, in --job order)")
    parser.add_argument("--lines", type=int, default=50, help="how many last log lines to include (default 50)")
    parser.add_argument("--commit")
    parser.add_argument("--branch")
    parser.add_argument("--url", help="link to the run")
    parser.add_argument("--dry-run", action="store_true", help="print the message instead of sending it")
    args = parser.parse_args(argv)
    if len(args.log) > len(args.job):
        parser.error("more --log than --job")
    if args.lines < 1:
        parser.error("--lines must be at least 1")
    logs = [Path(p) for p in args.log] + [None] * (len(args.job) - len(args.log))
    detected = run_info_from_env()
    run = RunInfo(args.commit or detected.commit, args.branch or detected.branch, args.url or detected.url)
    return notify([Failure(job, log) for job, log in zip(args.job, logs)], run, args.lines, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
