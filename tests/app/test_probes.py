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
