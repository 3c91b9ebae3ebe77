"""Probes for orchestrators and scrapers: /health, /ready, /metrics. Never behind a key.

Each answers GET and HEAD, and reads no request header: a probe that carries a stray
`X-Request-Timeout-Ms`, key or body gets the same answer as one that does not
(`app.middleware` skips those checks on `PROBES`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Response

from app.dependencies import ServicesDep
from app.errors import NotReadyError, ShuttingDownError
from app.openapi import error_responses
from app.render import OrjsonResponse
from app.schemas import HealthResponse, ReadyResponse

PROMETHEUS_TEXT = {"text/plain": {"schema": {"type": "string"}}}
probes = APIRouter()


F = TypeVar("F", bound=Callable[..., Any])


def probe(path: str, **documented: Any) -> Callable[[F], F]:
    """GET `path`, documented; HEAD `path`, the same answer without its body (uvicorn
    drops it), left out of the OpenAPI document, which names one operation per method."""

    def register(endpoint: F) -> F:
        probes.add_api_route(path, endpoint, methods=["GET"], **documented)
        probes.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
        return endpoint

    return register


@probe("/health", response_model=HealthResponse)
async def health() -> Response:
    """Liveness: the process answers HTTP."""
    return OrjsonResponse({"status": "ok"})


@probe("/ready", response_model=ReadyResponse, responses=error_responses(503))
async def ready(services: ServicesDep) -> Response:
    """Readiness: the model is loaded and warmed up, and the service is not draining."""
    lifecycle = services.lifecycle
    if lifecycle.draining:
        raise ShuttingDownError("the service is shutting down")
    if not lifecycle.ready:
        raise NotReadyError("the model is not ready yet")
    return OrjsonResponse({"status": "ready"})


@probe("/metrics", response_class=Response, responses={200: {"content": PROMETHEUS_TEXT}})
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    registry = services.metrics
    return Response(registry.render(), media_type=registry.content_type)
