"""What routes get from the lifespan: one typed `Services` object.

The lifespan yields `{"services": Services(...)}`; Starlette hands that state to every
request, and `services_of` is the one place that reads it. `ServicesDep` is its route
dependency (a model route's only one: see docs/benchmarks.md); `Call` is what a model
verb's handler is given once its model version is resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.context import RequestContext
from app.inference import Inference
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.repository import ModelRepository


@dataclass(frozen=True, slots=True)
class Services:
    """The long-lived objects the lifespan owns, as routes see them."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle
    models: ModelRepository


def services_of(request: Request) -> Services:
    services: Services = request.state.services
    return services


# async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
# per dependency per request that profiling showed at ~18% of the event loop
async def _services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(_services)]


@dataclass(frozen=True, slots=True)
class Call:
    """What a model verb uses: the resolved version's verbs, the settings, the context."""

    model: Inference
    settings: Settings
    context: RequestContext
