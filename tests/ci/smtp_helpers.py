"""A real SMTP server (aiosmtpd) on loopback for the notifier tests, with an optional self-signed TLS setup."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests import REPO

USER, PASSWORD = "ci-bot", "s3cret pass"


@dataclass
class Inbox:
    """aiosmtpd handler that keeps every envelope it accepts."""

    envelopes: list = field(default_factory=list)
    logins: list = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


def authenticator(inbox: Inbox):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USER \
            and auth_data.password.decode() == PASSWORD
        if ok:
            inbox.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself
    return check


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Tls:
    """A throw-away CA and a certificate for 127.0.0.1 and localhost, made in the test."""

    ca_file: Path
    server_context: ssl.SSLContext


def make_tls(folder: Path) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca_file, context)


def start_server(inbox: Inbox, **smtp_options) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **smtp_options)
    controller.start()
    return controller


def clean_env(**settings: str) -> dict[str, str]:
    """The process environment without any CI or mail variable of the machine, plus these settings."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("SMTP_", "NOTIFY_", "GITHUB_", "CI_", "PIPELINE_"))}
    return {**keep, **settings}


def run_notify(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "ci/notify.py"), *args], env=env,
                          capture_output=True, text=True, timeout=60)
