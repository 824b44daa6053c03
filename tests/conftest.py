"""Shared test fixtures: paths to the repository and to the real dataset samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import REPO

# Small real samples of the public datasets, with their sources and licences (tests/fixtures/real/README.md).
REAL_FIXTURES = REPO / "tests" / "fixtures" / "real"


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    if not REAL_FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {REAL_FIXTURES}")
    return REAL_FIXTURES
