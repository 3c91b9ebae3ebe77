"""Every error the service answers with, and the one handler that renders them.

The body is always `{"error": {"code": "...", "message": "...", "request_id": "..."}}`;
`code` is stable and machine-readable, `message` says what to fix. Under `/v2` (the Open
Inference Protocol) it is that protocol's `{"error": "<message>"}`. The tree::

    ServiceError (a Starlette HTTPException)   500 internal
    ├── InvalidRequestError         422 invalid_request
    │   ├── InvalidJsonError        422 invalid_json
    │   ├── OutOfRangeError         422 out_of_range       n, steps, seed, latent values
    │   ├── NonFiniteInputError     422 non_finite         NaN or inf in a number
    │   ├── LatentSizeError         422 latent_size_mismatch
    │   ├── InvalidHeaderError      422 invalid_header
    │   ├── InvalidMultipartError   422 invalid_multipart
    │   └── InvalidImageError       422 invalid_image      corrupt, bad base64, not an image
    │       └── UnsupportedModeError 422 unsupported_mode
    ├── PayloadTooLargeError        413 payload_too_large  body bytes
    │   ├── TooManyImagesError      413 too_many_images
    │   └── ImageTooLargeError      413 image_too_large    pixels (decompression bombs)
    ├── UnauthorizedError           401 unauthorized
    ├── NotFoundError               404 not_found
    │   └── UnknownModelError       404 model_not_found    no such model or version
    ├── ModelLoadError              409 load_failed        an admin's load did not come up
    ├── MediaTypeError              415 unsupported_media_type
    ├── HeadTooLargeError           431 head_too_large     request line + headers
    ├── ReadTimeoutError            408 read_timeout       the client sent too slowly
    ├── UnavailableError            503 unavailable        (all 503s carry Retry-After)
    │   ├── OverloadedError         503 queue_full
    │   ├── NotReadyError           503 not_ready
    │   ├── ModelUnavailableError   503 model_unavailable  known, but no version is ready
    │   ├── ShuttingDownError       503 shutting_down
    │   └── TooManyConnectionsError 503 too_many_connections
    ├── RequestTimeoutError         504 timeout
    └── NonFiniteResultError        500 non_finite_output  the model produced NaN or inf

Errors derive from Starlette's `HTTPException` so that FastAPI passes them through its
own body parsing untouched. A 5xx message carries the request id for the operator. 431,
408 and `too_many_connections` come from `app.connections` before any app code runs
(request id `-`), or (408 for a body) from `app.middleware`; they close the connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response


class ServiceError(HTTPException):
    status_code = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(type(self).status_code, message, headers)
        self.message = message


class InvalidRequestError(ServiceError):
    status_code, code = 422, "invalid_request"


class InvalidJsonError(InvalidRequestError):
    code = "invalid_json"


class OutOfRangeError(InvalidRequestError):
    code = "out_of_range"


class NonFiniteInputError(InvalidRequestError):
    code = "non_finite"


class LatentSizeError(InvalidRequestError):
    code = "latent_size_mismatch"


class InvalidHeaderError(InvalidRequestError):
    code = "invalid_header"


class InvalidMultipartError(InvalidRequestError):
    code = "invalid_multipart"


class InvalidImageError(InvalidRequestError):
    code = "invalid_image"


class UnsupportedModeError(InvalidImageError):
    code = "unsupported_mode"


class PayloadTooLargeError(ServiceError):
    status_code, code = 413, "payload_too_large"


class TooManyImagesError(PayloadTooLargeError):
    code = "too_many_images"


class ImageTooLargeError(PayloadTooLargeError):
    code = "image_too_large"


class UnauthorizedError(ServiceError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFoundError(ServiceError):
    status_code, code = 404, "not_found"


class UnknownModelError(NotFoundError):
    code = "model_not_found"


class ModelLoadError(ServiceError):
    status_code, code = 409, "load_failed"


class MediaTypeError(ServiceError):
    status_code, code = 415, "unsupported_media_type"


class HeadTooLargeError(ServiceError):
    status_code, code = 431, "head_too_large"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class ReadTimeoutError(ServiceError):
    status_code, code = 408, "read_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class UnavailableError(ServiceError):
    status_code, code = 503, "unavailable"
    retry_after_s = 1

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": str(self.retry_after_s)})


class OverloadedError(UnavailableError):
    code = "queue_full"


class NotReadyError(UnavailableError):
    code = "not_ready"


class ModelUnavailableError(UnavailableError):
    code = "model_unavailable"


class ShuttingDownError(UnavailableError):
    code = "shutting_down"
    retry_after_s = 5


class TooManyConnectionsError(UnavailableError):
    code = "too_many_connections"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {**(self.headers or {}), "Connection": "close"}


class RequestTimeoutError(ServiceError):
    status_code, code = 504, "timeout"


class NonFiniteResultError(ServiceError):
    code = "non_finite_output"


def codes_for(status: int) -> list[str]:
    """Every `code` of the tree above that is answered with `status`, root first."""
    codes, pending = [], [ServiceError]
    while pending:
        error = pending.pop(0)
        if error.status_code == status and error.code not in codes:
            codes.append(error.code)
        pending.extend(error.__subclasses__())
    return codes


V2_PREFIX = "/v2"
_CODES_BY_STATUS = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
# pydantic error types that mean "a number outside its range" or "not a finite number";
# orjson reads an integer past 2**64 as a float, which pydantic then finds too large
_RANGE_TYPES = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "int_parsing_size",
}
_FINITE_TYPES = {"finite_number"}


def from_validation_errors(errors: Sequence[Any]) -> InvalidRequestError:
    """The first pydantic error as one line: where, and what is wrong (never the input)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    kind = first.get("type", "")
    if kind == "json_invalid":
        return InvalidJsonError(message)
    if kind in _FINITE_TYPES:
        return NonFiniteInputError(message)
    if kind in _RANGE_TYPES:
        return OutOfRangeError(message)
    return InvalidRequestError(message)


def as_service_error(exc: Exception, request_id: str = "-") -> ServiceError:
    """Map anything raised while serving a request to the error the client sees."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, RequestValidationError):
        return from_validation_errors(exc.errors())
    if isinstance(exc, HTTPException) and exc.status_code == 400:
        # FastAPI's own body parsing failed other than on JSON syntax (bytes that are not
        # UTF-8, nesting too deep for its parser). Every body it parses here is JSON, so
        # this is the 422 that `app.payloads.read_json` answers for the same bytes.
        return InvalidJsonError(f"the body is not valid JSON: {_parse_failure(exc)}")
    if isinstance(exc, HTTPException):
        error = ServiceError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
        error.code = _CODES_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        return error
    return ServiceError(f"internal error; quote request id {request_id} when reporting it")


def _parse_failure(exc: HTTPException) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "it is not UTF-8"
    if isinstance(cause, RecursionError):
        return "it is nested too deeply"
    return str(exc.detail)


def error_response(error: ServiceError, request_id: str, path: str = "") -> Response:
    """The documented error body; under /v2 the Open Inference Protocol's `{"error": "..."}`
    (the request id is in the X-Request-ID header there)."""
    body: dict[str, Any]
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        body = {"error": error.message}
    else:
        body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
    return Response(
        orjson.dumps(body), error.status_code, error.headers, media_type="application/json"
    )


def request_id_of(request: Request) -> str:
    context = request.scope.get("state", {}).get("context")
    return context.request_id if context is not None else "-"


async def handle_error(request: Request, exc: Exception) -> Response:
    """The exception handler registered for every error class the app renders."""
    request_id = request_id_of(request)
    return error_response(as_service_error(exc, request_id), request_id, request.url.path)
