"""The OpenAPI document, plus the request bodies FastAPI cannot see.

Routes that accept JSON *or* multipart read their bodies themselves (see
`app.payloads`), so FastAPI does not know their request models. `request_body` states
them in each route's `openapi_extra`, and `install_openapi` adds the models to the
document's components so that the references resolve and `/docs` renders both forms.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def request_body(json_model: type[BaseModel], form_model: type[BaseModel] | None = None) -> dict:
    """`openapi_extra` for a route: its JSON body and, when given, its multipart form."""
    content: dict[str, Any] = {"application/json": {"schema": _ref(json_model)}}
    if form_model is not None:
        content["multipart/form-data"] = {"schema": _ref(form_model)}
    return {"requestBody": {"required": True, "content": content}}


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
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point
