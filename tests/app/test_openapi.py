"""The OpenAPI document is a usable manual: both body types, resolvable references, examples."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


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


async def test_routes_document_their_errors_and_summaries(document):
    encode = document["paths"]["/encode"]["post"]
    assert {"413", "422", "503", "504"} <= set(encode["responses"])
    assert encode["description"]
    assert document["paths"]["/health"]["get"]["description"].startswith("Liveness")


async def test_docs_page_is_served(client):
    assert (await client.get("/docs")).status_code == 200
