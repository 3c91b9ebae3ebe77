"""The Python load generator on loopback: a closed loop at a concurrency, an open loop at a rate.

It runs on aiohttp over uvloop. httpx, tried first, cost the generator so much CPU on a
2-core machine that its open loop fell behind at ~900 requests/s against a service that
answers 2,000/s (the trivial model): at 1,000/s it sent half and its p50 was 400 ms.
aiohttp kept up to ~1,500/s with a p50 of 3 ms on the same machine and service.

Both loops are bounded by a request count and by seconds, whichever comes first;
in-flight requests are always waited for. Latency is measured from the moment a request
was due: in the closed loop that is when a worker sends it, in the open loop it is its
slot in the arrival schedule, so a server that falls behind shows its backlog in the
latencies (no coordinated omission). Requests cycle through `targets`, one `(url, body)`
each, or `(url, body, headers)` for a request that is not plain JSON.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

Target = tuple[str, bytes] | tuple[str, bytes, dict[str, str]]  # (url, body[, headers])
T = TypeVar("T")
HEADERS = {"content-type": "application/json"}


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only
    answered_at: list[float] = field(default_factory=list)  # perf_counter, one per latency
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # transport failures by kind
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop when it is installed (a cheaper client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _session(connections: int, timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers=HEADERS,
        trust_env=False,
    )


async def _send(
    session: aiohttp.ClientSession, target: Target, due: float, samples: Samples
) -> None:
    url, body = target[0], target[1]
    headers = target[2] if len(target) > 2 else None
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
    except TimeoutError:
        samples.errors["timeout"] += 1
    except aiohttp.ClientError as exc:
        samples.errors[type(exc).__name__] += 1
    else:
        now = time.perf_counter()
        samples.latencies.append(now - due)
        samples.answered_at.append(now)
        samples.statuses[str(response.status)] += 1


async def closed_loop(
    targets: Sequence[Target],
    *,
    concurrency: int,
    max_requests: int,
    seconds: float,
    timeout: float = 60.0,
    every: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> Samples:
    """`concurrency` workers, each sending its next request as soon as the last is answered.

    `on_progress(answered)` is called after every `every` answered requests.
    """
    samples = Samples()
    numbers = itertools.count()
    async with _session(concurrency, timeout) as session:
        started = time.perf_counter()
        stop_at = started + seconds

        reported = 0

        async def worker() -> None:
            nonlocal reported
            while (i := next(numbers)) < max_requests and time.perf_counter() < stop_at:
                await _send(session, targets[i % len(targets)], time.perf_counter(), samples)
                due = every and samples.answered >= reported + every
                if on_progress is not None and due:
                    reported = samples.answered
                    on_progress(reported)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        samples.seconds = time.perf_counter() - started
    return samples


async def open_loop(
    targets: Sequence[Target],
    *,
    rate: float,
    max_requests: int,
    seconds: float,
    max_in_flight: int = 512,
    timeout: float = 60.0,
) -> Samples:
    """Requests due at a fixed `rate` whatever the answers; beyond `max_in_flight` a
    due request is not sent and counts as the error `client_backlog`."""
    samples = Samples()
    in_flight: set[asyncio.Task[None]] = set()
    async with _session(max_in_flight, timeout) as session:
        started = time.perf_counter()
        for i in range(min(max_requests, int(rate * seconds))):
            due = started + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                samples.errors["client_backlog"] += 1
                continue
            task = asyncio.create_task(_send(session, targets[i % len(targets)], due, samples))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        samples.seconds = time.perf_counter() - started
    return samples
