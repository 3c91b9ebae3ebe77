"""Pure ASGI middleware, outermost first as `create_app` stacks them:

- `RequestContextMiddleware`: request id (taken from `X-Request-ID` or made, and
  returned), the deadline (`X-Request-Timeout-Ms` may shorten the default), one JSON
  access-log line and the request metrics per request, and the last-resort 500.
- `DrainGate`: while draining, new work is answered 503 `shutting_down` at once.
- `BodyLimitMiddleware`: 413 as soon as `Content-Length` or the bytes received so far
  pass the limit; the body is never read to its end first. 408 (and the connection
  closed) when the app waits for a body that has not arrived within
  `VAE_BODY_TIMEOUT_S` of the request's start.
- `DisconnectCanceller`: a client that hangs up after sending its request cancels the
  request's task, so its rows leave the batcher's queue uncomputed.

Pure ASGI (not `BaseHTTPMiddleware`) so that bodies stream and cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import RequestContext
from app.errors import (
    InvalidHeaderError,
    PayloadTooLargeError,
    ReadTimeoutError,
    ServiceError,
    ShuttingDownError,
    as_service_error,
    error_response,
)
from app.lifecycle import Lifecycle
from app.metrics import Metrics

access_log = logging.getLogger("vae.access")
error_log = logging.getLogger("vae.errors")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # anything else could forge log lines
DIGITS = re.compile(r"[0-9]+")
PROBES = ("/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready")
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection first"


def _endpoint(scope: Scope) -> str:
    """The route's path template: a bounded label set for metrics (never the raw path)."""
    route = scope.get("route")
    return getattr(route, "path", "unmatched")


def _count(raw: str, limit: int) -> int | None:
    """The number in a header, or `limit + 1` for any beyond `limit`; None if not a number.

    ASCII digits only (`str.isdigit` also takes "²", which `int` refuses), and never
    `int` of a long string (it refuses more than 4300 digits): either would be a 500.
    """
    if not DIGITS.fullmatch(raw):
        return None
    digits = raw.lstrip("0") or "0"
    if len(digits) > len(str(limit)):
        return limit + 1
    return min(int(digits), limit + 1)


def _deadline(headers: Headers, default_ms: int, now: float) -> float:
    raw = headers.get("x-request-timeout-ms")
    if raw is None:
        return now + default_ms / 1000
    asked = _count(raw, default_ms)
    if asked is None or asked < 1:
        raise InvalidHeaderError("X-Request-Timeout-Ms must be a positive integer (milliseconds)")
    return now + min(asked, default_ms) / 1000  # a client may ask for less, never more


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, default_timeout_ms: int) -> None:
        self.app = app
        self.metrics = metrics
        self.default_timeout_ms = default_timeout_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        headers = Headers(scope=scope)
        offered = headers.get("x-request-id", "")
        request_id = offered if REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        context = RequestContext(request_id, deadline=started + self.default_timeout_ms / 1000)
        # a copy: the ASGI spec asks servers to copy lifespan state per request, not all do
        scope["state"] = {**scope.get("state", {}), "context": context}
        status: int | None = None  # set when the response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            if scope["path"] not in PROBES:  # a probe reads no header (app.probes)
                context.deadline = _deadline(headers, self.default_timeout_ms, started)
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            pass  # nobody is left to answer
        except Exception as exc:  # a bad header (before the app ran), or a bug: the last resort
            if not isinstance(exc, ServiceError):
                error_log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if status is not None:
                raise  # the response had started: let the server abort the connection
            error = as_service_error(exc, request_id)
            await error_response(error, request_id, scope["path"])(scope, receive, send_with_id)
        finally:
            final = CLIENT_CLOSED if status is None else status
            self._record(scope, context, final, time.monotonic() - started)

    def _record(self, scope: Scope, context: RequestContext, status: int, seconds: float) -> None:
        endpoint = _endpoint(scope)
        self.metrics.observe_request(endpoint, status, seconds, context.model, context.version)
        fields = {
            "request_id": context.request_id,
            "method": scope["method"],
            "endpoint": endpoint,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "items": context.items,
            "batch_ids": context.batch_ids,
        }
        if context.model:
            fields["model"], fields["version"] = context.model, context.version
        access_log.info("request", extra={"fields": fields})


class DrainGate:
    def __init__(self, app: ASGIApp, *, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.lifecycle.draining and scope["path"] not in PROBES:
            self.metrics.rejected.labels("shutting_down").inc()
            context = scope["state"]["context"]
            error = ShuttingDownError("the service is shutting down; retry on another instance")
            await error_response(error, context.request_id, scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"the request body is larger than {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:  # probes never read a body
            await self.app(scope, receive, send)
            return
        declared = _count(Headers(scope=scope).get("content-length", ""), self.max_bytes)
        if declared is not None and declared > self.max_bytes:
            context = scope["state"]["context"]
            error = self._too_large()
            await error_response(error, context.request_id, scope["path"])(scope, receive, send)
            return
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # what follows the body is the hang-up, however late
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:  # an HTTPException, like the 413: FastAPI passes it through
                raise ReadTimeoutError(
                    f"the request body did not arrive within {self.timeout_s:g} s"
                ) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)


class DisconnectCanceller:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        body_read = asyncio.Event()
        responded = hung_up = False

        async def receive_body() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True
            await send(message)

        async def watch() -> None:
            nonlocal hung_up
            await body_read.wait()  # only then is the next message the client's hang-up
            if (await receive())["type"] == "http.disconnect" and not responded:
                hung_up = True
                task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, receive_body, send_tracked)
        except asyncio.CancelledError:
            if not hung_up:
                raise
            task.uncancel()  # our own cancellation, not the server's: end quietly
            raise ClientDisconnect() from None
        finally:
            watcher.cancel()
