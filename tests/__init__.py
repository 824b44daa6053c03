"""The project's tests; REPO is the repository root, for every test that needs a path in it.

One skip policy (`unavailable`): a test whose tool is missing (a browser, a linter, a Docker engine, a SLURM
cluster) skips on a developer's machine, with the reason and how to install it, and fails under CI=true, where
.ci/run installs every one of them: there a missing tool is a broken setup, not a reason to test less. What no
CI machine has (a GPU, TensorRT, another CPU architecture) skips everywhere, with the reason.
"""

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent


def ci() -> bool:
    """True when the tests run in CI (CI=true|1|yes, as GitHub, GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip this test locally because `reason`; fail it under CI=true."""
    if ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)
