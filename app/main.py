"""The application factory and its lifespan. Serve with `uvicorn app.main:app`.

`create_app(settings)` only wires things together; nothing is loaded at import. The
lifespan owns every long-lived object, in this order:

    start: start the batcher -> load the repository's models (each warmed up at every op
           and bucket; the default model must come up) -> poll, if asked -> ready
    stop:  not ready (new work: 503) -> stop polling -> close the batcher -> drain within
           VAE_DRAIN_TIMEOUT_S

uvicorn stops accepting connections on SIGTERM and waits for in-flight requests before
the lifespan stops; run it with `--timeout-graceful-shutdown` close to
`VAE_DRAIN_TIMEOUT_S` so that a stuck client cannot hold the process, with
`--no-access-log` since the service writes its own JSON access log, and with
`--http app.connections:Protocol`, which bounds every phase of a connection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from app import management, probes, routes, v2
from app.batching import Batcher
from app.config import Settings, describe_error
from app.dependencies import Services
from app.errors import handle_error
from app.lifecycle import Lifecycle, StartupFailureReporter, drain_on_signals
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import (
    BodyLimitMiddleware,
    DisconnectCanceller,
    DrainGate,
    RequestContextMiddleware,
)
from app.openapi import body_models, error_responses, install_docs, install_openapi
from app.render import OrjsonResponse
from app.repository import ModelRepository
from app.runtime import StartupError
from app.security import ApiKeys, api_key_guard
from app.ui import install_ui

logger = logging.getLogger("vae.lifecycle")

DESCRIPTION = """A variational autoencoder over HTTP, with server-side dynamic batching.

Images go in as base64 strings in JSON or as multipart `files`; images come out as base64
PNG or, with `"format": "array"`, as float arrays. Every error is
`{"error": {"code", "message", "request_id"}}`."""
State = dict[str, Services]  # the lifespan state: Starlette copies it into each request


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app from `settings` (default: the environment). Loads nothing."""
    settings = settings or Settings()
    metrics, lifecycle = Metrics(), Lifecycle()
    app = FastAPI(
        title="vae-serve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan(settings, metrics, lifecycle),
        default_response_class=OrjsonResponse,
        openapi_url=None,  # app.openapi.install_docs serves these, behind the key guard
        docs_url=None,
        redoc_url=None,
        # what the middleware may answer on any path: the body's size and time, a bad
        # header, a bug
        responses=error_responses(408, 413, 422, 500),
    )
    for error in (HTTPException, RequestValidationError):
        app.add_exception_handler(error, handle_error)
    guard = api_key_guard(ApiKeys(settings.all_api_keys()))
    app.include_router(routes.api, dependencies=[Depends(guard)])
    app.include_router(management.listing, dependencies=[Depends(guard)])
    app.include_router(v2.api, dependencies=[Depends(guard)])
    if settings.admin_keys:  # no admin key: the management routes do not exist
        admin_guard = api_key_guard(ApiKeys(settings.all_admin_keys()), role="admin")
        app.include_router(management.admin, dependencies=[Depends(admin_guard)])
        app.include_router(v2.repository, dependencies=[Depends(admin_guard)])
    app.include_router(probes.probes)
    app.include_router(v2.health)
    if settings.ui:
        install_ui(app)
    _add_middleware(app, settings, metrics, lifecycle)
    install_openapi(app, body_models(routes.api))
    install_docs(app, None if settings.public_docs else guard)
    return app


def _add_middleware(
    app: FastAPI, settings: Settings, metrics: Metrics, lifecycle: Lifecycle
) -> None:
    """Innermost first: each `add_middleware` wraps everything added before it."""
    app.add_middleware(DisconnectCanceller)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "X-Request-ID",
                "X-Request-Timeout-Ms",
            ],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(DrainGate, lifecycle=lifecycle, metrics=metrics)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, default_timeout_ms=settings.request_timeout_ms
    )
    app.add_middleware(StartupFailureReporter, lifecycle=lifecycle)


def _lifespan(
    settings: Settings, metrics: Metrics, lifecycle: Lifecycle
) -> Callable[[FastAPI], AbstractAsyncContextManager[State]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        configure_logging(settings.log_level)
        try:
            async with _serving(settings, metrics, lifecycle) as state:
                yield state
        except StartupError as exc:
            lifecycle.startup_failure = str(exc)
            raise

    return lifespan


@asynccontextmanager
async def _serving(
    settings: Settings, metrics: Metrics, lifecycle: Lifecycle
) -> AsyncIterator[State]:
    batcher = Batcher(
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        on_batch=metrics.observe_batch,
    )
    async with batcher:
        models = ModelRepository(settings, batcher, metrics)
        started = time.perf_counter()
        await models.start()
        metrics.track_queue(lambda: batcher.queued_rows, lambda: batcher.in_flight_requests)
        metrics.ready.set_function(lambda: float(lifecycle.ready))
        # Everything loaded so far (torch, the model, FastAPI's routes: ~200k objects) lives
        # as long as the process; a full collection walked it all (~45 ms on the trivial
        # model, p99 spikes). Frozen, the collector only walks what requests create
        # (docs/benchmarks.md). A model unloaded later is still freed: freezing only
        # exempts objects from the cycle collector, not from reference counting.
        gc.collect()
        gc.freeze()
        lifecycle.mark_ready()
        fields = {
            "startup_s": round(time.perf_counter() - started, 3),
            "models": [f"{e.name}:{e.version}" for e in models.entries() if e.state == "ready"],
            "batch_sizes": list(settings.buckets.sizes),
        }
        logger.info("ready", extra={"fields": fields})
        services = Services(settings, metrics, lifecycle, models)
        poller = asyncio.create_task(models.poll(settings.poll_s)) if settings.poll_s else None
        try:
            with drain_on_signals(lifecycle):
                yield {"services": services}
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            await _drain(batcher, lifecycle, settings.drain_timeout_s)
            await models.close()


async def _drain(batcher: Batcher, lifecycle: Lifecycle, timeout_s: float) -> None:
    lifecycle.begin_drain()
    batcher.close()
    drained = await batcher.drain(timeout_s)
    if not drained:  # the drain budget is a bound: fail what is left rather than wait on
        batcher.abort()
    fields = {"drained": drained, "left": batcher.in_flight_requests}
    logger.info("stopped", extra={"fields": fields})


def _app_from_environment() -> FastAPI:
    """`create_app()` for `uvicorn app.main:app`: a bad setting exits with one line."""
    try:
        return create_app()
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        raise SystemExit(2) from None


app = _app_from_environment()
