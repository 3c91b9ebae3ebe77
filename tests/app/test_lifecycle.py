"""Readiness flags, the signal hook in front of the server's handler, and draining."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.lifecycle import Lifecycle, drain_on_signals
from app.main import create_app

pytestmark = pytest.mark.anyio


def test_begin_drain_turns_readiness_off():
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    lifecycle.begin_drain()
    assert lifecycle.draining and not lifecycle.ready


def test_signal_starts_the_drain_then_reaches_the_servers_handler():
    received: list[int] = []

    def server_handler(sig, frame):  # what uvicorn installs
        received.append(sig)

    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        lifecycle = Lifecycle()
        with drain_on_signals(lifecycle):
            os.kill(os.getpid(), signal.SIGTERM)
            assert lifecycle.draining and received == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is server_handler  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_default_dispositions_are_left_alone():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with drain_on_signals(Lifecycle()):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def server_signal_handler():
    """Stand in for uvicorn: a Python SIGTERM handler that records the signal."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: received.append(sig))
    yield received
    signal.signal(signal.SIGTERM, previous)


async def test_sigterm_turns_ready_off_and_refuses_new_work(
    serve, assert_error, server_signal_handler
):
    async with serve() as client:
        assert (await client.get("/ready")).status_code == 200
        os.kill(os.getpid(), signal.SIGTERM)
        assert server_signal_handler == [signal.SIGTERM]
        assert_error(await client.get("/ready"), 503, "shutting_down")
        response = await client.post("/sample", json={"n": 1})
        assert_error(response, 503, "shutting_down")
        assert response.headers["retry-after"] == "5"
        assert (await client.get("/health")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'vae_rejected_total{reason="shutting_down"} 1.0' in metrics


async def in_flight(client) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("vae_in_flight_requests "):
            return float(line.split()[1])
    raise AssertionError("no vae_in_flight_requests")


async def test_shutdown_finishes_accepted_work(make_settings, slow_model):
    """Leaving the lifespan while requests are in the batcher: each gets its full answer."""
    app = create_app(make_settings(max_batch_size=1))
    manager = LifespanManager(app)
    await manager.__aenter__()
    transport = httpx.ASGITransport(app=manager.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vae") as client:
        burst = [
            asyncio.ensure_future(client.post("/sample", json={"n": 4, "seed": i}))
            for i in range(8)
        ]
        async with asyncio.timeout(5):
            while await in_flight(client) < len(burst):
                await asyncio.sleep(0.001)
        await manager.__aexit__(None, None, None)
        responses = await asyncio.gather(*burst)
    assert [r.status_code for r in responses] == [200] * len(burst)
    assert all(len(r.json()["images"]) == 4 for r in responses)
