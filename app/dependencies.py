"""Route dependencies: the lifespan's long-lived objects and the request context, as
`Annotated` aliases so a route's signature says what it uses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.config import Settings
from app.context import RequestContext, context_of
from app.inference import Inference
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.runtime import ModelRuntime


def _from_state(name: str) -> Any:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread
    # hop per dependency per request that profiling showed at ~18% of the event loop
    async def get(request: Request) -> Any:
        return getattr(request.state, name)

    return Depends(get)


InferenceDep = Annotated[Inference, _from_state("inference")]
SettingsDep = Annotated[Settings, _from_state("settings")]
RuntimeDep = Annotated[ModelRuntime, _from_state("runtime")]
LifecycleDep = Annotated[Lifecycle, _from_state("lifecycle")]
MetricsDep = Annotated[Metrics, _from_state("metrics")]
ContextDep = Annotated[RequestContext, Depends(context_of)]
