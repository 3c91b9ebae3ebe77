"""Optional API keys: which endpoints need one, how it is presented, and that it is not logged."""

from __future__ import annotations

import pytest

from app.security import ApiKeys

pytestmark = pytest.mark.anyio

KEY = "s3cret-key-1"


def test_api_keys_accept_only_configured_keys():
    keys = ApiKeys(["a", KEY])
    assert keys.enabled and keys.accepts(KEY) and keys.accepts("a")
    assert not keys.accepts("") and not keys.accepts(KEY + "x") and not keys.accepts("b")
    assert not ApiKeys([]).enabled


@pytest.fixture(scope="module")
async def guarded(serve):
    async with serve(api_keys=f"other,{KEY}") as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"X-API-Key": "nope"},
        {"Authorization": f"Basic {KEY}"},
    ],
)
async def test_without_a_valid_key_the_api_is_401(guarded, assert_error, headers):
    for path, kwargs in [("/sample", {"json": {"n": 1}}), ("/model", {})]:
        method = guarded.post if path == "/sample" else guarded.get
        response = await method(path, headers=headers, **kwargs)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}, {"authorization": f"bearer {KEY}"}],
)
async def test_a_valid_key_in_either_header_passes(guarded, headers):
    response = await guarded.post("/sample", json={"n": 1}, headers=headers)
    assert response.status_code == 200


async def test_probes_never_need_a_key(guarded):
    for path in ("/health", "/ready", "/metrics"):
        assert (await guarded.get(path)).status_code == 200


async def test_keys_from_a_file(serve, tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# rotated 2024-06\nfile-key\n")
    async with serve(api_keys_file=path) as client:
        assert (await client.get("/model")).status_code == 401
        assert (await client.get("/model", headers={"X-API-Key": "file-key"})).status_code == 200


async def test_keys_never_reach_the_logs(guarded, log_lines):
    await guarded.get("/model", headers={"Authorization": f"Bearer {KEY}"})
    await guarded.get("/model", headers={"X-API-Key": "wrong-key-xyz"})
    logged = "\n".join(log_lines)
    assert '"endpoint":"/model"' in logged
    assert KEY not in logged and "wrong-key-xyz" not in logged


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": f"  {KEY}  "},
        {"X-API-Key": f"\t{KEY}"},
        {"Authorization": f"Bearer   {KEY}  "},
        {"Authorization": f"  bearer {KEY}"},
    ],
    ids=["x-api-key spaces", "x-api-key tab", "bearer spaces", "leading spaces"],
)
async def test_both_headers_are_trimmed_alike(guarded, headers):
    assert (await guarded.get("/model", headers=headers)).status_code == 200


async def test_with_both_headers_the_bearer_token_is_the_key(guarded, assert_error):
    both = {"Authorization": f"Bearer {KEY}", "X-API-Key": "wrong"}
    assert (await guarded.get("/model", headers=both)).status_code == 200
    both = {"Authorization": "Bearer wrong", "X-API-Key": KEY}
    assert_error(await guarded.get("/model", headers=both), 401, "unauthorized")
    not_bearer = {"Authorization": f"Basic {KEY}", "X-API-Key": KEY}
    assert (await guarded.get("/model", headers=not_bearer)).status_code == 200


async def test_a_blank_key_is_no_key(guarded):
    response = await guarded.get("/model", headers={"X-API-Key": "   "})
    assert "is required" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_the_docs_need_a_key_when_keys_are_set(guarded, assert_error, path):
    assert_error(await guarded.get(path), 401, "unauthorized")
    assert (await guarded.get(path, headers={"X-API-Key": KEY})).status_code == 200


async def test_public_docs_publish_them_without_a_key(serve):
    async with serve(api_keys=KEY, public_docs=True) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 200
        assert (await client.get("/model")).status_code == 401
