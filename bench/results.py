"""What one load run measured, whichever generator produced it.

`RunResult` is written to the JSON report as is (`dataclasses.asdict`); latencies are
milliseconds, throughput is requests per second over the run's own wall time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 95, 99)


@dataclass
class Latency:
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            return cls(None, None, None, None, None)
        ms = np.asarray(seconds) * 1000.0
        p50, p95, p99 = (round(float(v), 3) for v in np.percentile(ms, PERCENTILES))
        return cls(p50, p95, p99, round(float(ms.mean()), 3), round(float(ms.max()), 3))


@dataclass
class RunResult:
    workload: str  # e.g. "/encode x1"
    mode: str  # "closed" (fixed concurrency) or "open" (fixed arrival rate)
    generator: str  # "wrk" or "aiohttp"
    concurrency: int | None
    rate: float | None  # requests/s offered (open loop)
    requests: int  # answered, any status
    ok: int  # answered 2xx
    seconds: float
    throughput: float  # 2xx answers per second
    rows_per_s: float  # throughput x items per request
    latency_ms: Latency  # over every answered request
    statuses: dict[str, int]  # "200": n, ...
    errors: dict[str, int]  # transport failures: "timeout": n, "connect": n, ...
    rss_mb: dict[str, float | None] = field(default_factory=dict)  # server, before/after
    batches: dict[str, Any] = field(default_factory=dict)  # from the service's /metrics

    @classmethod
    def build(
        cls,
        *,
        workload: str,
        items: int,
        mode: str,
        generator: str,
        concurrency: int | None,
        rate: float | None,
        seconds: float,
        latency: Latency,
        statuses: Counter[str] | dict[str, int],
        errors: Counter[str] | dict[str, int],
    ) -> RunResult:
        ok = sum(n for status, n in statuses.items() if status.startswith("2"))
        throughput = ok / seconds if seconds > 0 else 0.0
        return cls(
            workload=workload,
            mode=mode,
            generator=generator,
            concurrency=concurrency,
            rate=rate,
            requests=sum(statuses.values()),
            ok=ok,
            seconds=round(seconds, 3),
            throughput=round(throughput, 2),
            rows_per_s=round(throughput * items, 2),
            latency_ms=latency,
            statuses=dict(sorted(statuses.items())),
            errors=dict(sorted(errors.items())),
        )
