"""Fuzz every operation in the OpenAPI document with schemathesis, against the real app.

Each test builds the app on the tiny real artifact; schemathesis calls it in-process
over ASGI and runs its lifespan. Positive cases are valid by the document, negative
ones are not (bodies, and the X-Request-ID / X-Request-Timeout-Ms headers every
operation takes). Whatever is sent, the answer is never a 5xx and matches the document:
its status, content type, headers and body. Bounded: the same 30 cases per operation
and mode on every run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

OPERATIONS = [
    "POST /encode",
    "POST /decode",
    "POST /sample",
    "POST /interpolate",
    "POST /anomaly",
    "GET /model",
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "GET /models",
    "GET /models/{name}",
    "POST /models/{name}/sample",
    "POST /models/{name}/versions/{version}/decode",
]
# the same handlers and bodies as the top-level verbs, at the addresses that name a model;
# one verb per address above fuzzes the path parameters
SAME_HANDLERS = {
    f"POST {prefix}/{verb}"
    for prefix in ("/models/{name}", "/models/{name}/versions/{version}")
    for verb in ("encode", "decode", "sample", "interpolate", "anomaly")
} - set(OPERATIONS)
FUZZ = settings(
    max_examples=30,
    derandomize=True,  # the same cases on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def no_server_error(ctx: CheckContext, response: Response, case: schemathesis.Case) -> None:
    """`not_a_server_error`, save the 504 a caller asks for with an X-Request-Timeout-Ms
    that then passes: the documented answer (an idle app meets its default deadline)."""
    asked = (case.headers or {}).get("X-Request-Timeout-Ms")
    if response.status_code == 504 and asked is not None:
        assert response.elapsed * 1000 >= int(asked), "504 before the deadline passed"
        return
    not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api(make_settings) -> Iterator[schemathesis.BaseSchema]:
    """The document as the app serves it; the app's lifespan ends with the test."""
    app = create_app(make_settings())
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    schemathesis.python.asgi.shutdown_lifespans()


def test_every_documented_operation_is_fuzzed(api):
    documented = {result.ok().label for result in api.get_all_operations()}
    assert documented == set(OPERATIONS) | SAME_HANDLERS


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize("label", OPERATIONS)
def test_every_response_is_documented_and_never_a_server_error(api, label, mode):
    operation = api.find_operation_by_label(label)

    @FUZZ
    @given(case=operation.as_strategy(mode))
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    call()
