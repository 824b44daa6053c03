"""schemathesis against the server's own OpenAPI schema, on loopback: no request may get a 5xx.

Bounded: a fixed number of examples per operation, a seed, and a wall-clock timeout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.asset.test_page_browser import KEY, server  # noqa: F401  (the loopback uvicorn fixture, its API key)

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_no_server_errors(server, tmp_path):  # noqa: F811
    if not SCHEMATHESIS.exists():
        pytest.fail("schemathesis is not installed: run `make setup` (pinned in requirements-dev.txt)")
    url, _ = server
    result = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
         "--seed", "1", "--request-timeout", "30", "--workers", "1", "--no-color", "--header", f"X-API-Key: {KEY}"],
        capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,  # its .schemathesis/ cache goes there
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in report
    generated = re.search(r"(\d+) generated, \d+ passed", report)
    assert generated and int(generated.group(1)) > 50, report  # it really sent requests
