"""What routes get from the lifespan: one typed `Services` object, and the request context.

The lifespan yields `{"services": Services(...)}`; Starlette hands that state to every
request, and `services_of` is the one place that reads it. `ServicesDep` is its route
dependency, and `CallDep` is all a model route needs, in one dependency.
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
from app.runtime import ModelRuntime


@dataclass(frozen=True, slots=True)
class Services:
    """The long-lived objects the lifespan owns, as routes see them."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle
    runtime: ModelRuntime
    model: Inference


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
    """What a model route uses, as one dependency rather than three: FastAPI solves each
    dependency with its own recursive `solve_dependencies` (parameters, cookies, cache
    key), ~11% of the event loop with three (see docs/benchmarks.md)."""

    model: Inference
    settings: Settings
    context: RequestContext


async def _call_of(request: Request) -> Call:
    services = services_of(request)
    return Call(services.model, services.settings, request.state.context)


CallDep = Annotated[Call, Depends(_call_of)]
