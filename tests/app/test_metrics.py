"""Prometheus metrics: a registry per app, and what /metrics reports."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.batching import BatchStats
from app.metrics import Metrics

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_app_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.observe_request("/encode", 200, 0.01)
    assert b'vae_requests_total{endpoint="/encode",model="",status="200",version=""} 1.0' in (
        first.render()
    )
    assert b"/encode" not in second.render()


def test_batch_stats_feed_the_histograms():
    metrics = Metrics()
    waits = (0.001, 0.002, 0.003)
    metrics.observe_batch(BatchStats(1, "decode", 12, 3, waits, 0.05, None, "mnist", "2"))
    metrics.observe_batch(
        BatchStats(2, "decode", 1, 1, (0.0,), 0.01, RuntimeError("x"), "mnist", "2")
    )
    metrics.observe_batch(BatchStats(3, "decode", 5, 1, (0.0,), 0.01, None, "parts", "1"))
    values = samples(metrics.render().decode())
    mnist = (("model", "mnist"), ("op", "decode"), ("version", "2"))
    assert values[("vae_batch_rows_sum", mnist)] == 13
    assert values[("vae_batch_requests_count", mnist)] == 2
    assert values[("vae_queue_wait_seconds_count", mnist)] == 4
    assert values[("vae_batch_failures_total", mnist)] == 1
    assert (
        values[("vae_batch_rows_sum", (("model", "parts"), ("op", "decode"), ("version", "1")))]
        == 5
    )


def test_queue_depth_is_read_at_scrape_time():
    metrics, depth = Metrics(), [3]
    metrics.track_queue(lambda: depth[0], lambda: depth[0] + 1)
    depth[0] = 7
    values = samples(metrics.render().decode())
    assert values[("vae_queue_rows", ())] == 7 and values[("vae_in_flight_requests", ())] == 8


async def test_metrics_endpoint_reports_requests_batches_and_readiness(client):
    await client.post("/sample", json={"n": 2, "seed": 1})
    await client.post("/sample", json={"n": 0})
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    model = (("model", "artifact0"), ("version", "1"))  # the test artifact's folder
    assert (
        values[
            (
                "vae_requests_total",
                (("endpoint", "/sample"), *model[:1], ("status", "200"), *model[1:]),
            )
        ]
        >= 1
    )
    assert (
        values[
            (
                "vae_requests_total",
                (("endpoint", "/sample"), *model[:1], ("status", "422"), *model[1:]),
            )
        ]
        >= 1
    )
    assert values[("vae_request_duration_seconds_count", (("endpoint", "/sample"), *model))] >= 2
    assert values[("vae_batch_rows_count", (model[0], ("op", "decode"), model[1]))] >= 1
    assert values[("vae_model_loaded", model)] == 1
    assert values[("vae_ready", ())] == 1
    assert ("vae_queue_rows", ()) in values


async def test_unknown_paths_share_one_label(client):
    for path in ("/a", "/b/c", "/d?x=1"):
        await client.get(path)
    text = (await client.get("/metrics")).text
    assert 'endpoint="unmatched",model="",status="404"' in text and "/b/c" not in text
