"""Probes for orchestrators and scrapers: /health, /ready, /metrics. Never behind a key."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.dependencies import ServicesDep
from app.errors import NotReadyError, ShuttingDownError
from app.openapi import error_responses
from app.render import OrjsonResponse
from app.schemas import HealthResponse, ReadyResponse

PROMETHEUS_TEXT = {"text/plain": {"schema": {"type": "string"}}}
probes = APIRouter()


@probes.get("/health", response_model=HealthResponse)
async def health() -> Response:
    """Liveness: the process answers HTTP."""
    return OrjsonResponse({"status": "ok"})


@probes.get("/ready", response_model=ReadyResponse, responses=error_responses(503))
async def ready(services: ServicesDep) -> Response:
    """Readiness: the model is loaded and warmed up, and the service is not draining."""
    lifecycle = services.lifecycle
    if lifecycle.draining:
        raise ShuttingDownError("the service is shutting down")
    if not lifecycle.ready:
        raise NotReadyError("the model is not ready yet")
    return OrjsonResponse({"status": "ready"})


@probes.get("/metrics", response_class=Response, responses={200: {"content": PROMETHEUS_TEXT}})
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    registry = services.metrics
    return Response(registry.render(), media_type=registry.content_type)
