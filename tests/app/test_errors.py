"""The error tree and its mapping from framework errors."""

from __future__ import annotations

import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.errors import (
    OverloadedError,
    ServiceError,
    TooManyImagesError,
    as_service_error,
    codes_for,
    error_response,
    from_validation_errors,
)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("finite_number", "non_finite"),
        ("greater_than_equal", "out_of_range"),
        ("less_than_equal", "out_of_range"),
        ("json_invalid", "invalid_json"),
        ("missing", "invalid_request"),
    ],
)
def test_validation_errors_map_to_codes(kind, code):
    error = from_validation_errors([{"type": kind, "loc": ("body", "n"), "msg": "bad"}])
    assert error.status_code == 422 and error.code == code
    assert error.message == "body.n: bad"


def test_validation_message_never_echoes_the_input():
    errors = [{"type": "string_type", "loc": ("body",), "msg": "bad", "input": "SECRET"}] * 3
    error = from_validation_errors(errors)
    assert "SECRET" not in error.message and "(and 2 more)" in error.message


def test_http_exceptions_keep_their_status():
    error = as_service_error(HTTPException(404, "Not Found"))
    assert (error.status_code, error.code) == (404, "not_found")


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8"),
        (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    ],
)
def test_framework_body_parse_failure_is_invalid_json(cause, reason):
    """FastAPI's 400 for a body its JSON parser could not read: the 422 of `read_json`."""
    exc = HTTPException(400, "There was an error parsing the body")
    exc.__cause__ = cause
    error = as_service_error(exc)
    assert (error.status_code, error.code) == (422, "invalid_json")
    assert reason in error.message


def test_codes_for_a_status_walk_the_whole_tree():
    assert codes_for(413) == ["payload_too_large", "too_many_images", "image_too_large"]
    assert "unsupported_mode" in codes_for(422) and "non_finite_output" in codes_for(500)
    assert codes_for(418) == []


def test_unknown_exceptions_are_internal_with_the_request_id():
    error = as_service_error(ValueError("secret detail"), "req-1")
    assert error.status_code == 500 and "req-1" in error.message
    assert "secret" not in error.message


def test_request_validation_error_is_mapped():
    exc = RequestValidationError([{"type": "missing", "loc": ("body", "n"), "msg": "required"}])
    assert as_service_error(exc).code == "invalid_request"


def test_error_response_body_and_headers():
    response = error_response(OverloadedError("busy"), "abc")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert orjson.loads(response.body) == {
        "error": {"code": "queue_full", "message": "busy", "request_id": "abc"}
    }


def test_subclasses_inherit_status():
    assert TooManyImagesError("x").status_code == 413
    assert isinstance(TooManyImagesError("x"), ServiceError | HTTPException)
