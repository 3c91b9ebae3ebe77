"""The Python load generator's bookkeeping when nothing answers: errors by kind, no latency."""

from __future__ import annotations

import socket

from bench import load


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_connections_are_counted_by_kind_and_never_as_answers():
    url = f"http://127.0.0.1:{free_port()}/encode"
    samples = load.run(load.open_loop([(url, b"{}")], rate=200, max_requests=10, seconds=1))
    assert samples.answered == 0 and not samples.statuses
    assert sum(samples.errors.values()) == 10
    assert set(samples.errors) == {"ClientConnectorError"}


def test_closed_loop_stops_at_its_request_bound():
    url = f"http://127.0.0.1:{free_port()}/encode"
    samples = load.run(load.closed_loop([(url, b"{}")], concurrency=3, max_requests=7, seconds=5))
    assert sum(samples.errors.values()) == 7 and samples.seconds < 5


def test_progress_is_reported_once_per_step_even_when_requests_fail():
    url = f"http://127.0.0.1:{free_port()}/encode"
    reported: list[int] = []
    load.run(
        load.closed_loop(
            [(url, b"{}")], concurrency=2, max_requests=6, seconds=5, every=2,
            on_progress=reported.append,
        )
    )  # fmt: skip
    assert reported == []  # nothing was answered, so no step was reached
