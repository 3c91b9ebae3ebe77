"""Probes: liveness, readiness, and that they answer without a key."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


async def test_health_and_ready(client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}


async def test_probes_do_not_touch_the_model(client):
    def batches(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("vae_batch_rows_count")]

    before = batches((await client.get("/metrics")).text)
    for path in ("/health", "/ready", "/health"):
        assert (await client.get(path)).status_code == 200
    assert batches((await client.get("/metrics")).text) == before


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
async def test_probes_answer_head(client, path):
    get, head = await client.get(path), await client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.headers["content-type"] == get.headers["content-type"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Request-Timeout-Ms": "soon"},
        {"X-Request-Timeout-Ms": "0"},
        {"Content-Type": "text/nonsense", "Content-Length": str(10**12)},
        {"Authorization": "Bearer not-a-key", "X-API-Key": "nope"},
    ],
    ids=["bad deadline", "zero deadline", "huge declared body", "bad keys"],
)
async def test_probes_ignore_headers_they_do_not_need(client, headers):
    for path in ("/health", "/ready", "/metrics"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text)
