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
