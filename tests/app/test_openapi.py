"""The OpenAPI document is a usable manual: both body types, resolvable references, examples."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio

PROBES = {"GET /health", "GET /ready", "GET /metrics"}
VERBS = ("encode", "anomaly", "interpolate", "decode", "sample")
# bodies the routes read themselves: JSON or multipart, or JSON only (415 otherwise), at
# every address of a verb
SELF_PARSED = {
    f"POST {prefix}/{verb}"
    for verb in VERBS
    for prefix in ("", "/models/{name}", "/models/{name}/versions/{version}")
}


@pytest.fixture(scope="module")
async def document(client):
    return (await client.get("/openapi.json")).json()


def resolve(document: dict, ref: str) -> dict:
    node = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def all_refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in all_refs(value)]
    return []


async def test_every_reference_resolves(document):
    for ref in all_refs(document):
        assert resolve(document, ref), ref


@pytest.mark.parametrize(
    ("path", "json_model", "form_model"),
    [
        ("/encode", "EncodeRequest", "EncodeForm"),
        ("/anomaly", "AnomalyRequest", "AnomalyForm"),
        ("/interpolate", "InterpolateRequest", "InterpolateForm"),
    ],
)
async def test_image_routes_document_json_and_multipart(document, path, json_model, form_model):
    content = document["paths"][path]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"]["$ref"].endswith(json_model)
    form = resolve(document, content["multipart/form-data"]["schema"]["$ref"])
    assert form["properties"]["files"]["items"]["format"] == "binary"


async def test_request_models_carry_examples(document):
    schemas = document["components"]["schemas"]
    for name in (
        "EncodeRequest",
        "DecodeRequest",
        "SampleRequest",
        "InterpolateRequest",
        "AnomalyRequest",
    ):
        assert schemas[name].get("examples"), name


def operations(document: dict) -> dict[str, dict]:
    return {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


async def test_routes_document_their_errors_and_summaries(document):
    encode = document["paths"]["/encode"]["post"]
    assert {"401", "413", "415", "422", "500", "503", "504"} <= set(encode["responses"])
    assert encode["description"]
    assert document["paths"]["/health"]["get"]["description"].startswith("Liveness")


async def test_every_operation_documents_what_the_middleware_answers(document):
    """Any path may answer 413 (body limit), 422 (a bad header) or 500, with the error body
    and, like every response, X-Request-ID; and every path takes the two request headers."""
    error_body = {"$ref": "#/components/schemas/ErrorResponse"}
    for label, operation in operations(document).items():
        responses = operation["responses"]
        for status in ("413", "422", "500"):
            assert responses[status]["content"]["application/json"]["schema"] == error_body, label
        for status, response in responses.items():
            assert response["headers"]["X-Request-ID"]["required"], (label, status)
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == {"X-Request-ID", "X-Request-Timeout-Ms"}, label


async def test_error_statuses_are_documented_where_they_can_happen(document):
    for label, operation in operations(document).items():
        statuses = set(operation["responses"])
        assert ("401" in statuses) == (label not in PROBES), label
        assert ("415" in statuses) == (label in SELF_PARSED), label
    ready = document["paths"]["/ready"]["get"]["responses"]["503"]
    assert ready["headers"]["Retry-After"]["required"]
    assert "`shutting_down`" in ready["description"]


async def test_metrics_document_the_prometheus_text(document):
    content = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"text/plain"}


async def test_docs_page_is_served(client):
    assert (await client.get("/docs")).status_code == 200
