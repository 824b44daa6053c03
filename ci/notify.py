"""E-mail the maintainers when the image pipeline fails (SMTP settings from the environment).

    SMTP_HOST, SMTP_PORT (587), SMTP_USER, SMTP_PASSWORD, NOTIFY_FROM, NOTIFY_TO (comma separated)
    python ci/notify.py --subject "..." --body-file log.txt
"""

from __future__ import annotations

import argparse
import os
import smtplib
import ssl
import sys
from email.message import EmailMessage


def build_message(subject: str, body: str, sender: str, recipients: list[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message.set_content(body)
    return message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--body-file", help="file whose text is the mail body (default: stdin)")
    parser.add_argument("--dry-run", action="store_true", help="print the message instead of sending it")
    args = parser.parse_args(argv)
    body = open(args.body_file, encoding="utf-8").read() if args.body_file else sys.stdin.read()
    recipients = [r.strip() for r in os.environ.get("NOTIFY_TO", "").split(",") if r.strip()]
    sender = os.environ.get("NOTIFY_FROM", "ci@localhost")
    if not recipients:
        print("error: NOTIFY_TO is empty: set it to the addresses to notify", file=sys.stderr)
        return 2
    message = build_message(args.subject, body[-20000:], sender, recipients)
    if args.dry_run:
        print(message)
        return 0
    host = os.environ.get("SMTP_HOST")
    if not host:
        print("error: SMTP_HOST is not set", file=sys.stderr)
        return 2
    with smtplib.SMTP(host, int(os.environ.get("SMTP_PORT", "587")), timeout=30) as smtp:
        smtp.starttls(context=ssl.create_default_context())
        if os.environ.get("SMTP_USER"):
            smtp.login(os.environ["SMTP_USER"], os.environ.get("SMTP_PASSWORD", ""))
        smtp.send_message(message)
    print(f"sent to {', '.join(recipients)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
