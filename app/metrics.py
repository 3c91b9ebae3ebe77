"""Prometheus metrics on a registry of the app's own (never the global one).

One `Metrics` per app, so tests can build many apps in one process. Names::

    vae_requests_total{endpoint, status, model, version}     counter
    vae_request_duration_seconds{endpoint, model, version}   histogram
    vae_batch_rows{op, model, version}               histogram  rows per model call
    vae_batch_requests{op, model, version}           histogram  requests per model call
    vae_batch_model_seconds{op, model, version}      histogram  model time per batch
    vae_batch_failures_total{op, model, version}     counter    batches whose run() raised
    vae_queue_wait_seconds{op, model, version}       histogram  submit -> dispatch
    vae_queue_rows                                   gauge      rows waiting now
    vae_in_flight_requests                           gauge      requests in the batcher now
    vae_rejected_total{reason}                       counter    queue_full, shutting_down
    vae_connections_closed_total{reason}             counter    by app.connections: head_too_large,
                                                                head_timeout, body_timeout,
                                                                too_many_connections
    vae_timeouts_total{endpoint}                     counter    504s
    vae_ready                                        gauge      1 when serving
    vae_model_loaded{model, version}                 gauge      1 per version serving
    vae_model_load_failures_total{model, version}    counter    loads that did not come up

`model` and `version` are empty for a request no model served (a probe, a 404).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from app.batching import BatchStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MODEL_LABELS = ["model", "version"]
BATCH_LABELS = ["op", *MODEL_LABELS]


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vae_requests",
            "HTTP requests answered",
            ["endpoint", "status", *MODEL_LABELS],
            registry=r,
        )
        self.latency = Histogram(
            "vae_request_duration_seconds",
            "request latency",
            ["endpoint", *MODEL_LABELS],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "vae_batch_rows", "rows per model call", BATCH_LABELS, buckets=ROW_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "vae_batch_requests",
            "requests per model call",
            BATCH_LABELS,
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.model_time = Histogram(
            "vae_batch_model_seconds",
            "model time per batch",
            BATCH_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_failures = Counter(
            "vae_batch_failures", "model calls that raised", BATCH_LABELS, registry=r
        )
        self.queue_wait = Histogram(
            "vae_queue_wait_seconds",
            "time from submit to dispatch",
            BATCH_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_rows = Gauge("vae_queue_rows", "rows waiting for the model", registry=r)
        self.in_flight = Gauge(
            "vae_in_flight_requests", "requests submitted and not yet answered", registry=r
        )
        self.rejected = Counter(
            "vae_rejected", "requests refused before queueing", ["reason"], registry=r
        )
        self.timeouts = Counter("vae_timeouts", "requests answered 504", ["endpoint"], registry=r)
        self.connections_closed = Counter(
            "vae_connections_closed",
            "connections the server closed before the app answered",
            ["reason"],
            registry=r,
        )
        self.ready = Gauge("vae_ready", "1 while the service is ready", registry=r)
        self.model_loaded = Gauge(
            "vae_model_loaded", "1 per model version serving", MODEL_LABELS, registry=r
        )
        self.load_failures = Counter(
            "vae_model_load_failures", "model loads that failed", MODEL_LABELS, registry=r
        )

    def observe_request(
        self, endpoint: str, status: int, seconds: float, model: str = "", version: str = ""
    ) -> None:
        self.requests.labels(endpoint, str(status), model, version).inc()
        self.latency.labels(endpoint, model, version).observe(seconds)
        if status == 504:
            self.timeouts.labels(endpoint).inc()

    def observe_batch(self, stats: BatchStats) -> None:
        """The batcher's `on_batch` hook: one call per model call."""
        labels = (stats.op, stats.model, stats.version)
        self.batch_rows.labels(*labels).observe(stats.rows)
        self.batch_requests.labels(*labels).observe(stats.requests)
        self.model_time.labels(*labels).observe(stats.model_s)
        queue_wait = self.queue_wait.labels(*labels)
        for wait in stats.queue_wait_s:
            queue_wait.observe(wait)
        if stats.error is not None:
            self.batch_failures.labels(*labels).inc()

    def track_queue(self, queued_rows: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the batcher's depth at scrape time instead of on every change."""
        self.queue_rows.set_function(queued_rows)
        self.in_flight.set_function(in_flight)

    def render(self) -> bytes:
        return generate_latest(self.registry)
