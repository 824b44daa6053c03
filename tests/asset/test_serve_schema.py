"""Every answer matches the server's own OpenAPI schema (schemathesis' Python API, positive and negative cases):
errors included, so the documented error bodies and media types cannot drift from what the server sends.
(test_serve_fuzz.py runs the schemathesis CLI for 5xx; this checks the answers' shapes.) Bounded: 10 examples
per operation and mode."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from asset.serve import Settings, create_app
from tests.asset.serve_helpers import LoopbackServer, exported_copy

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def api_schema(trained_model, tmp_path_factory):
    model = exported_copy(trained_model, tmp_path_factory.mktemp("schema") / "model")
    # small limits, so that generated bodies also reach the size checks
    app = create_app(Settings(model=str(model), threads=1, max_body_mb=0.5, max_pixels=1_000_000, max_wait_ms=1))
    with LoopbackServer(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_answers_match_the_schema(api_schema, mode):
    # hypothesis over each operation (schemathesis' lazy pytest integration does not support pytest 9)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/predict/batch", "/healthz", "/readyz", "/model", "/metrics"}
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  phases=[Phase.explicit, Phase.generate])
        def fuzz(case):
            response = case.call_and_validate(checks=CHECKS, timeout=30)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        try:
            fuzz()
        except Unsatisfiable:  # negative mode: an operation without parameters or body has nothing to break
            assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET", operation.label
    assert "POST /predict" in statuses and "POST /predict/batch" in statuses, statuses
    if mode is GenerationMode.POSITIVE:
        assert 200 in statuses["POST /predict"], statuses  # schemathesis sends real images for image/* bodies
