"""The one skip policy (tests/__init__.py `unavailable`): a missing tool skips a test locally and fails it under
CI=true, where .ci/run installs every tool."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import REPO


@pytest.mark.parametrize("ci,outcome", [("", "1 skipped"), ("true", "1 failed")])
def test_a_missing_tool_skips_locally_and_fails_in_ci(tmp_path, ci, outcome):
    (tmp_path / "test_tool.py").write_text("from tests import unavailable\n\n\ndef test_needs_a_tool():\n"
                                           "    unavailable('no frobnicator on PATH: apt-get install frobnicator')\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rsf", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert outcome in result.stdout, result.stdout + result.stderr
    assert "no frobnicator on PATH" in result.stdout
