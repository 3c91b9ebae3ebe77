"""The measurements taken on a running service, each bounded in requests and seconds.

    closed      one workload at a fixed concurrency (wrk when installed, else aiohttp)
    open        one workload at a fixed arrival rate (aiohttp)
    sequential  requests one at a time (aiohttp): the first after ready, and the steady state
    soak        mixed requests, sampling the server's RSS as they go (aiohttp)

Every closed and open run also records the server's RSS before and after, and the
batches the service formed meanwhile (from its `/metrics`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from app.artifact import ModelMetadata
from bench import load, wrk
from bench.payloads import Workload, body
from bench.results import Latency, RunResult
from bench.server import Server, batch_summary

SOAK_CONCURRENCY = 8


class Runner:
    """Runs measurements against `server` with bodies for a model with `metadata`."""

    def __init__(
        self, server: Server, metadata: ModelMetadata, *, seconds: float, max_requests: int,
        use_wrk: bool, wrk_threads: int = 1,
    ) -> None:  # fmt: skip
        self.server, self.metadata = server, metadata
        self.seconds, self.max_requests = seconds, max_requests
        self.use_wrk, self.wrk_threads = use_wrk, wrk_threads

    def closed(self, workload: Workload, concurrency: int) -> RunResult:
        content = body(workload, self.metadata)
        before, rss_before = self.server.batch_metrics(), self.server.rss_mb()
        url = self.server.url(workload.path)
        if self.use_wrk:
            seconds, latency, statuses, errors = wrk.closed_loop(
                url, content, concurrency=concurrency, max_requests=self.max_requests,
                seconds=self.seconds, threads=self.wrk_threads,
            )  # fmt: skip
            result = RunResult.build(
                workload=workload.label, items=workload.items, mode="closed", generator="wrk",
                concurrency=concurrency, rate=None, seconds=seconds, latency=latency,
                statuses=statuses, errors=errors,
            )  # fmt: skip
        else:
            samples = load.run(
                load.closed_loop(
                    [(url, content)],
                    concurrency=concurrency,
                    max_requests=self.max_requests,
                    seconds=self.seconds,
                )
            )
            result = _from_samples(samples, workload, "closed", concurrency, None)
        return self._finish(result, before, rss_before)

    def open(self, workload: Workload, rate: float) -> RunResult:
        content = body(workload, self.metadata)
        before, rss_before = self.server.batch_metrics(), self.server.rss_mb()
        samples = load.run(
            load.open_loop(
                [(self.server.url(workload.path), content)],
                rate=rate,
                max_requests=self.max_requests,
                seconds=self.seconds,
            )
        )
        result = _from_samples(samples, workload, "open", None, rate)
        return self._finish(result, before, rss_before)

    def _finish(
        self, result: RunResult, before: dict[str, float], rss_before: float | None
    ) -> RunResult:
        self.server.settle()
        result.rss_mb = {"before": rss_before, "after": self.server.rss_mb()}
        result.batches = batch_summary(before, self.server.batch_metrics())
        where = f"c={result.concurrency}" if result.mode == "closed" else f"rate={result.rate}/s"
        print(
            f"    {result.workload:<14} {where:<12} {result.throughput:9.1f} req/s"
            f"  p50 {result.latency_ms.p50} ms  p99 {result.latency_ms.p99} ms"
            f"  {result.statuses} {result.errors or ''}",
            flush=True,
        )
        return result

    def sequential(self, workload: Workload, count: int) -> dict[str, Any]:
        """`count` requests one after another: their latency percentiles."""
        if not count:
            return {}
        samples = load.run(
            load.closed_loop(
                [(self.server.url(workload.path), body(workload, self.metadata))],
                concurrency=1,
                max_requests=count,
                seconds=600.0,
            )
        )
        return {"requests": samples.answered, **dataclasses.asdict(Latency.of(samples.latencies))}

    def soak(self, mixed: list[Workload], requests: int, seconds: float) -> dict[str, Any]:
        """Requests cycling through `mixed` at concurrency 8; RSS sampled twenty times."""
        targets = [
            (self.server.url(w.path), body(w, self.metadata, seed=i)) for i, w in enumerate(mixed)
        ]
        rss: list[tuple[int, float | None]] = [(0, self.server.rss_mb())]
        print(f"    soak: {requests} mixed requests, at most {seconds:g} s", flush=True)
        samples = load.run(
            load.closed_loop(
                targets,
                concurrency=SOAK_CONCURRENCY,
                max_requests=requests,
                seconds=seconds,
                every=max(requests // 20, 1),
                on_progress=lambda answered: rss.append((answered, self.server.rss_mb())),
            )
        )
        rss.append((samples.answered, self.server.rss_mb()))
        values = [mb for _, mb in rss if mb is not None]
        return {
            "requests": samples.answered,
            "concurrency": SOAK_CONCURRENCY,
            "seconds": round(samples.seconds, 2),
            "statuses": dict(samples.statuses),
            "errors": dict(samples.errors),
            "rss_mb": {"start": values[0], "end": values[-1], "max": max(values)} if values else {},
            "rss_samples": rss,
        }


def _from_samples(
    samples: load.Samples, workload: Workload, mode: str, concurrency: int | None,
    rate: float | None,
) -> RunResult:  # fmt: skip
    return RunResult.build(
        workload=workload.label,
        items=workload.items,
        mode=mode,
        generator="aiohttp",
        concurrency=concurrency,
        rate=rate,
        seconds=samples.seconds,
        latency=Latency.of(samples.latencies),
        statuses=samples.statuses,
        errors=samples.errors,
    )
