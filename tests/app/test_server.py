"""A real uvicorn process on loopback: shutdown, overload, deadlines and disconnects.

These behaviours live in the server (signals, sockets, concurrent connections), so the
tests start `uvicorn app.main:app` as a subprocess (`tests.app.server_process`) on a port
it picks itself. The model is the tiny test artifact, slowed by a fixed sleep per model
call, so bursts stay in flight long enough to observe. Every wait is bounded; every
process is killed at teardown whatever happened.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.app.server_process import Server, start_server, stop

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SLOW_MODEL = {
    "TEST_MODEL_DELAY_S": "0.05",
    "VAE_MAX_BATCH_SIZE": "4",
    "VAE_MAX_WAIT_MS": "1",
    "VAE_MAX_QUEUE": "8",
    "VAE_MAX_IMAGES": "8",
    "VAE_MAX_SAMPLES": "8",
    "VAE_MAX_STEPS": "8",
    "VAE_TORCH_THREADS": "1",
}


@pytest.fixture(scope="module")
def slow_server(artifact_dir, tmp_path_factory) -> Iterator[Server]:
    server = start_server(artifact_dir, tmp_path_factory.mktemp("slow") / "stderr", SLOW_MODEL)
    yield server
    stop(server)


@pytest.fixture
async def http(slow_server) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=slow_server.url, limits=limits, timeout=15) as client:
        yield client


async def metric(client: httpx.AsyncClient, prefix: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_overload_is_refused_with_503_and_health_keeps_answering(http):
    """Far more than the queue holds: every request ends 200, 503 or 504, never 500."""
    burst = [
        asyncio.ensure_future(http.post("/sample", json={"n": 2, "seed": i})) for i in range(40)
    ]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    health = await http.get("/health")
    health_s = time.monotonic() - started
    responses = await asyncio.gather(*burst)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503, 504} and 200 in statuses and 503 in statuses
    for refused in (r for r in responses if r.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
    assert health.status_code == 200 and health_s < 1.0
    assert await metric(http, 'vae_rejected_total{reason="queue_full"}') == statuses.count(503)


async def test_deadline_header_gives_504_in_time(http):
    started = time.monotonic()
    response = await http.post("/sample", json={"n": 4}, headers={"X-Request-Timeout-Ms": "10"})
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert time.monotonic() - started < 1.0
    assert (await http.post("/sample", json={"n": 1})).status_code == 200


async def test_queued_request_of_a_departed_client_is_not_computed(artifact_dir, tmp_path):
    # Batches of 250 ms: the impatient client hangs up 30 ms in, and the server has the
    # rest of the 500 ms ahead of it to notice, even on a loaded machine (at 50 ms a batch,
    # under load 6, it once did not)
    slower = {**SLOW_MODEL, "TEST_MODEL_DELAY_S": "0.25"}
    server = start_server(artifact_dir, tmp_path / "stderr", slower)
    rows = f'vae_batch_rows_sum{{model="{artifact_dir.name}",op="sample",version="1"}}'
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            before = await metric(http, rows)
            # `ahead` fills the next two full batches; the impatient request queues behind
            # them and its client hangs up before a batch could take it
            ahead = asyncio.ensure_future(http.post("/sample", json={"n": 8}))
            async with asyncio.timeout(5):
                while await metric(http, "vae_in_flight_requests") < 1:
                    await asyncio.sleep(0.002)
            async with httpx.AsyncClient(base_url=server.url, timeout=0.03) as impatient:
                with pytest.raises(httpx.TimeoutException):
                    await impatient.post("/sample", json={"n": 2})
            assert (await ahead).status_code == 200
            await asyncio.sleep(0.6)  # the departed request's batch would have run by now
            assert await metric(http, rows) - before == 8
        assert '"status":499' in server.stderr()
    finally:
        stop(server)


async def test_sigterm_mid_burst_finishes_accepted_work(artifact_dir, tmp_path):
    server = start_server(
        artifact_dir, tmp_path / "stderr", {**SLOW_MODEL, "VAE_MAX_QUEUE": "64"}, drain_s=10
    )
    try:
        async with httpx.AsyncClient(
            base_url=server.url, timeout=15, limits=httpx.Limits(max_connections=100)
        ) as client:
            burst = [
                asyncio.ensure_future(client.post("/sample", json={"n": 4, "seed": i}))
                for i in range(12)
            ]  # 12 batches of 50 ms: 0.6 s of work
            async with asyncio.timeout(5):
                while await metric(client, "vae_in_flight_requests") < len(burst):
                    await asyncio.sleep(0.005)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            late = [
                await attempt(server.url, "/ready"),
                await attempt(server.url, "/sample", {"n": 1}),
            ]
            responses = await asyncio.gather(*burst)
        assert [r.status_code for r in responses] == [200] * len(burst)
        assert all(len(r.json()["images"]) == 4 for r in responses)
        assert all(outcome in ("refused", "shutting_down") for outcome in late), late
        returncode = await asyncio.to_thread(server.process.wait, 10)
        assert time.monotonic() - signalled < 10
        assert returncode in (0, -signal.SIGTERM), server.stderr()
        assert "Traceback" not in server.stderr()
    finally:
        stop(server)


async def attempt(url: str, path: str, body: dict | None = None) -> str:
    """A new connection after SIGTERM: the error code it gets, or 'refused'."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            response = await (client.post(path, json=body) if body else client.get(path))
    except httpx.TransportError:
        return "refused"
    return response.json()["error"]["code"] if response.status_code == 503 else str(response)
