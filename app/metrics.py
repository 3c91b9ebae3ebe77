"""Prometheus metrics on a registry of the app's own (never the global one).

One `Metrics` per app, so tests can build many apps in one process. Names::

    vae_requests_total{endpoint, status}             counter
    vae_request_duration_seconds{endpoint}           histogram
    vae_batch_rows{op}                               histogram  rows per model call
    vae_batch_requests{op}                           histogram  requests per model call
    vae_batch_model_seconds{op}                      histogram  model time per batch
    vae_batch_failures_total{op}                     counter    batches whose run() raised
    vae_queue_wait_seconds{op}                       histogram  submit -> dispatch
    vae_queue_rows                                   gauge      rows waiting now
    vae_in_flight_requests                           gauge      requests in the batcher now
    vae_rejected_total{reason}                       counter    queue_full, shutting_down
    vae_timeouts_total{endpoint}                     counter    504s
    vae_ready                                        gauge      1 when serving
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


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vae_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "vae_request_duration_seconds",
            "request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "vae_batch_rows", "rows per model call", ["op"], buckets=ROW_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "vae_batch_requests",
            "requests per model call",
            ["op"],
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.model_time = Histogram(
            "vae_batch_model_seconds",
            "model time per batch",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_failures = Counter(
            "vae_batch_failures", "model calls that raised", ["op"], registry=r
        )
        self.queue_wait = Histogram(
            "vae_queue_wait_seconds",
            "time from submit to dispatch",
            ["op"],
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
        self.ready = Gauge("vae_ready", "1 while the service is ready", registry=r)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status == 504:
            self.timeouts.labels(endpoint).inc()

    def observe_batch(self, stats: BatchStats) -> None:
        """The batcher's `on_batch` hook: one call per model call."""
        self.batch_rows.labels(stats.op).observe(stats.rows)
        self.batch_requests.labels(stats.op).observe(stats.requests)
        self.model_time.labels(stats.op).observe(stats.model_s)
        for wait in stats.queue_wait_s:
            self.queue_wait.labels(stats.op).observe(wait)
        if stats.error is not None:
            self.batch_failures.labels(stats.op).inc()

    def track_queue(self, queued_rows: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the batcher's depth at scrape time instead of on every change."""
        self.queue_rows.set_function(queued_rows)
        self.in_flight.set_function(in_flight)

    def render(self) -> bytes:
        return generate_latest(self.registry)
