"""The OpenAPI document, plus what FastAPI cannot see.

Routes read their bodies themselves (JSON *or* multipart, see `app.payloads`), so
FastAPI does not know their request models. `request_body` states them in each route's
`openapi_extra`; each such endpoint names its models in its `body_models` attribute,
and `install_openapi` adds those to the document's components, so that the references
resolve and `/docs` renders both forms.

The middleware answers on every path, before any route runs, so its errors and headers
are stated once: `error_responses` gives any router (the app's own included) the error
body for its statuses, and `install_openapi` adds the request and response headers of
`app.middleware` to every operation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.errors import codes_for
from app.middleware import REQUEST_ID
from app.schemas import ErrorResponse

REF = "#/components/schemas/{model}"
REQUEST_HEADERS = [
    {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": f"returned as is when it matches {REQUEST_ID.pattern}; else a new id",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Request-Timeout-Ms",
        "in": "header",
        "required": False,
        "description": "a shorter deadline than the server's default (never a longer one)",
        "schema": {"type": "integer", "minimum": 1},
    },
]
ECHOED_ID = {"description": "the caller's X-Request-ID or a new one", "schema": {"type": "string"}}
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "401": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    "503": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _describe(status: int) -> str:
    codes = ", ".join(f"`{code}`" for code in codes_for(status))
    return f"{HTTPStatus(status).phrase}: {codes}"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses` for a route or router: the error body, and its codes, for each status."""
    return {
        status: {"model": ErrorResponse, "description": _describe(status)} for status in statuses
    }


def request_body(json_model: type[BaseModel], form_model: type[BaseModel] | None = None) -> dict:
    """`openapi_extra` for a route that reads its body with `app.payloads`: its JSON body,
    its multipart form when given, and the 415 for any other Content-Type."""
    content: dict[str, Any] = {"application/json": {"schema": _ref(json_model)}}
    if form_model is not None:
        content["multipart/form-data"] = {"schema": _ref(form_model)}
    unsupported = {
        "description": _describe(415),
        "content": {"application/json": {"schema": _ref(ErrorResponse)}},
    }
    return {
        "requestBody": {"required": True, "content": content},
        "responses": {"415": unsupported},
    }


def body_models(*routers: APIRouter) -> list[type[BaseModel]]:
    """The request models of every route that reads its own body, in route order."""
    models: list[type[BaseModel]] = []
    for router in routers:
        for route in router.routes:
            for model in getattr(getattr(route, "endpoint", None), "body_models", ()):
                if model not in models:
                    models.append(model)
    return models


def install_docs(app: FastAPI, guard: Callable[..., Awaitable[None]] | None) -> None:
    """/openapi.json, /docs (Swagger UI) and /redoc, behind `guard` when given.

    FastAPI's own are turned off (`create_app`) because they take no dependency; these are
    the same pages. A browser sends no key when it opens /docs, so behind a key the pages
    are for clients that fetch them with one; `VAE_PUBLIC_DOCS=true` publishes them.
    """
    dependencies = [] if guard is None else [Depends(guard)]

    def prefix(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def document(request: Request) -> Response:
        return JSONResponse(app.openapi())

    async def swagger(request: Request) -> Response:
        return get_swagger_ui_html(openapi_url=f"{prefix(request)}/openapi.json", title=app.title)

    async def redoc(request: Request) -> Response:
        return get_redoc_html(openapi_url=f"{prefix(request)}/openapi.json", title=app.title)

    for path, endpoint in (("/openapi.json", document), ("/docs", swagger), ("/redoc", redoc)):
        app.add_api_route(path, endpoint, include_in_schema=False, dependencies=dependencies)


def install_openapi(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Generate the document once, with `models` (and what they use) in its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in defs.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            _add_middleware_headers(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point


def _add_middleware_headers(document: dict[str, Any]) -> None:
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            operation.setdefault("parameters", []).extend(dict(h) for h in REQUEST_HEADERS)
            operation["responses"] = dict(sorted(operation["responses"].items()))
            for status, response in operation["responses"].items():
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = {**ECHOED_ID, "required": True}
                for name, header in RESPONSE_HEADERS.get(status, {}).items():
                    headers[name] = {**header, "required": True}
