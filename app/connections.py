"""HTTP/1.1 connections with every phase bounded: uvicorn's httptools protocol, plus the
limits uvicorn lacks. Serve with `uvicorn app.main:app --http app.connections:Protocol`.

uvicorn bounds neither the size of a request head nor the time a client takes to send
it, and its keep-alive timer starts only after a first response, so a client that
connects and sends nothing, or half a head, or half a body, holds a connection for as
long as it likes (and one 100 MB header took 12 s to parse). Per connection::

    phase                        bound                                  then
    connected, nothing sent      --timeout-keep-alive (uvicorn's)       closed
    between two requests         --timeout-keep-alive                   closed
    request line and headers     VAE_MAX_HEAD_BYTES, VAE_MAX_HEADERS    431, closed
                                 VAE_HEAD_TIMEOUT_S from its first byte 408, closed
    body                         VAE_BODY_TIMEOUT_S after the head      408 (app.middleware);
                                                                        closed a second later
    open connections             --limit-concurrency (uvicorn's)        503, closed: at once
                                                                        for the connection
                                                                        that reaches it; those
                                                                        already open are served

Head bytes are counted before the parser sees them, so a huge header is refused after
`VAE_MAX_HEAD_BYTES`, not parsed. They are counted per read: a head that starts in the
same read as the end of the request before it (pipelining) may reach twice the limit.
Answers from here carry the service's error body with request id `-`, and are counted in
`vae_connections_closed_total{reason}`. After one, the connection lingers: it stops
writing, drops what the client still sends for up to `LINGER_S`, then closes, so that a
client still sending reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from app.config import Settings
from app.errors import (
    HeadTooLargeError,
    ReadTimeoutError,
    ServiceError,
    TooManyConnectionsError,
    error_response,
)
from app.metrics import Metrics

BODY_GRACE_S = 1.0  # after VAE_BODY_TIMEOUT_S: time for the app's own 408 to go out first
LINGER_S = 2.0  # reading (and dropping) what a refused client still sends, as nginx does
_DEFAULTS = Settings.model_fields


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = _DEFAULTS["max_head_bytes"].default
    max_headers: int = _DEFAULTS["max_headers"].default
    head_timeout_s: float = _DEFAULTS["head_timeout_s"].default
    body_timeout_s: float = _DEFAULTS["body_timeout_s"].default

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.max_head_bytes,
            settings.max_headers,
            settings.head_timeout_s,
            settings.body_timeout_s,
        )


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (settings from the lifespan)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        services = app_state.get("services")  # see app.dependencies.Services
        self.limits = (
            ConnectionLimits() if services is None else ConnectionLimits.of(services.settings)
        )
        self.metrics: Metrics | None = None if services is None else services.metrics
        self.reading_head = True  # no request yet, or the head of one is arriving
        self.head_bytes = 0
        self.header_count = 0
        self.refusal: ServiceError | None = None
        self.lingering = False
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        # The cap is enforced once, when a connection is made. uvicorn also checks it per
        # request, answering every connection's requests with its own plain-text 503 while
        # the cap is reached: a flood of idle connections would shut out the clients
        # already connected. In-flight requests are bounded by connections and the queue.
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None

    # --- the connection --------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.max_connections  # uvicorn's own check answers 503 from `limit` on
        if limit is not None and len(self.connections) >= limit:
            message = f"{limit} connections are open; retry later"
            self.refuse(TooManyConnectionsError(message), "too_many_connections")
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )  # uvicorn arms it only after a response: a silent client would stay forever

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        self._unset_keepalive_if_required()
        view = memoryview(data)
        while view and not self.transport.is_closing() and not self.lingering:
            size = self.limits.max_head_bytes
            if self.reading_head:
                self.start_head_timer()
                size -= self.head_bytes
                if size <= 0:
                    message = f"the request head is larger than {self.limits.max_head_bytes} bytes"
                    self.refuse(HeadTooLargeError(message), "head_too_large")
                    return
                self.head_bytes += min(size, len(view))
            piece, view = view[:size], view[size:]
            self.feed(piece)

    def feed(self, piece: memoryview) -> None:
        """uvicorn's `data_received` for one piece, with this protocol's refusals."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self.refusal is None:
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
        if self.refusal is not None and not self.transport.is_closing() and not self.lingering:
            self.refuse(self.refusal, "head_too_large")

    def refuse(self, error: ServiceError, reason: str) -> None:
        """Answer `error` (unless a response is under way), then linger and close."""
        self.cancel_timers()
        self._unset_keepalive_if_required()
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response of the app's is under way: cut it short
            return
        response = error_response(error, "-")
        head = [STATUS_LINE[error.status_code]]
        for name, value in [*self.server_state.default_headers, *response.raw_headers]:
            head += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*head, b"\r\n", response.body]))
        self.lingering = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    # --- timers ----------------------------------------------------------------------
    def start_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.limits.head_timeout_s, self.head_late)

    def head_late(self) -> None:
        self.head_timer = None
        if self.reading_head and not self.transport.is_closing():
            message = f"the request head did not arrive within {self.limits.head_timeout_s:g} s"
            self.refuse(ReadTimeoutError(message), "head_timeout")

    def body_late(self, cycle: RequestResponseCycle) -> None:
        self.body_timer = None
        if cycle is self.cycle and cycle.more_body and not self.transport.is_closing():
            self.transport.close()  # the app answered 408 already, if it was reading
            if self.metrics is not None:
                self.metrics.connections_closed.labels("body_timeout").inc()

    def cancel_timers(self) -> None:
        for timer in (self.head_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = None

    # --- parser callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            message = f"more than {self.limits.max_headers} header lines"
            self.refusal = self.refusal or HeadTooLargeError(message)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.head_bytes = self.header_count = 0
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.refusal is None:
            super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        super()._start_asgi_task(cycle, app)
        if cycle is self.cycle and cycle.more_body and self.body_timer is None:
            wait = self.limits.body_timeout_s + BODY_GRACE_S
            self.body_timer = self.loop.call_later(wait, self.body_late, cycle)

    def on_body(self, body: bytes) -> None:
        if self.refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.reading_head = True
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.refusal is None:
            super().on_message_complete()
