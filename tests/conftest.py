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


# The modules that train, export or run whole pipelines: 5 s or more each on 2 cores (`pytest --durations=0`,
# 2026-12-07), 85% of the suite's time. Marked slow so that `make test-fast` (-m "not slow") stays an edit loop of
# under 2 minutes; `make test` (what CI runs) runs them all.
SLOW_MODULES = {
    "tests/asset/test_backends.py", "tests/asset/test_benchmark.py", "tests/asset/test_benchmark_smoke.py",
    "tests/asset/test_cv.py", "tests/asset/test_decision_head.py", "tests/asset/test_export.py",
    "tests/asset/test_export_gate.py", "tests/asset/test_page_browser.py", "tests/asset/test_predict.py",
    "tests/asset/test_recipes.py", "tests/asset/test_reexport.py", "tests/asset/test_scoring.py",
    "tests/asset/test_serve_fuzz.py", "tests/asset/test_serve_limits.py", "tests/asset/test_serve_schema.py",
    "tests/asset/test_sweep.py", "tests/asset/test_sync_batchnorm.py", "tests/asset/test_tensorrt_export.py",
    "tests/asset/test_train_evaluate.py", "tests/asset/test_train_rare_defects.py", "tests/asset/test_trt_build.py",
    "tests/datatools/test_synthetic_kolektor.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("::")[0] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
