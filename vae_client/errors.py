"""The exceptions a `vae_client` client raises for the service's error answers.

    VAEError                      .status .code .message .request_id
     ├── ClientError              4xx: the request is at fault; sending it again won't help
     │    └── AuthenticationError 401: the API key is missing or unknown
     └── ServerError              5xx
          ├── OverloadedError     503: queue full, or not ready yet; see .retry_after
          └── ServerTimeoutError  504: the model did not answer within the request timeout

`code` is the service's machine-readable code from `{"error": {"code", "message"}}`. An answer
without that body (a proxy's 502 page, say) gets the code `http_<status>`. Failures below HTTP
(connection refused, a client-side timeout) are httpx's own `httpx.TransportError`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx


class VAEError(Exception):
    """The service answered with an error status."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class ClientError(VAEError):
    pass


class AuthenticationError(ClientError):
    pass


class ServerError(VAEError):
    pass


class OverloadedError(ServerError):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(status, code, message, request_id)
        self.retry_after = retry_after  # seconds, from the Retry-After header when present


class ServerTimeoutError(ServerError):
    pass


def error_from_response(response: httpx.Response) -> VAEError:
    """The exception for a non-2xx `response` (whose body must already be read)."""
    status = response.status_code
    code, message, body_request_id = _error_body(response)
    request_id = response.headers.get("x-request-id") or body_request_id
    if status == 401:
        return AuthenticationError(status, code, message, request_id)
    if status == 503:
        retry_after = _retry_after(response.headers.get("retry-after"))
        return OverloadedError(status, code, message, request_id, retry_after)
    if status == 504:
        return ServerTimeoutError(status, code, message, request_id)
    kind = ClientError if status < 500 else ServerError
    return kind(status, code, message, request_id)


def _error_body(response: httpx.Response) -> tuple[str, str, str | None]:
    fallback = (f"http_{response.status_code}", response.reason_phrase or "error", None)
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"]), error.get("request_id")
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()
        return (fallback[0], text[:200], None) if text else fallback


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait, from either form of Retry-After: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
