"""The row queue on its own: plain calls, no event loop, no thread."""

from __future__ import annotations

import torch

from app.rowqueue import Request, RowQueue


def request(op: str, n: int, at: float = 0.0, deadline: float | None = None, width: int = 4):
    return Request(op, torch.zeros(n, width), submitted=at, deadline=deadline)


def test_rows_count_what_is_queued_and_not_yet_taken():
    queue = RowQueue()
    first, second = request("encode", 3), request("encode", 2)
    queue.add(first)
    queue.add(second)
    assert (queue.rows, len(queue), queue.head) == (5, 2, first)
    queue.remove(second)
    queue.remove(second)  # twice is harmless
    assert (queue.rows, len(queue)) == (3, 1)


def test_a_batch_takes_the_oldest_key_and_later_matches_in_order():
    queue = RowQueue()
    wanted = [request("decode", 1), request("decode", 2)]
    other = [request("encode", 1), request("decode", 1, width=8)]  # other op, other shape
    for r in (wanted[0], other[0], wanted[1], other[1]):
        queue.add(r)
    pieces = queue.take(max_rows=8)
    assert [(p.request, p.start, p.stop) for p in pieces] == [(wanted[0], 0, 1), (wanted[1], 0, 2)]
    assert queue.head is other[0] and queue.rows == 2


def test_a_request_larger_than_a_batch_is_split_and_stays_first_in_line():
    queue = RowQueue()
    big, small = request("encode", 10), request("encode", 1)
    queue.add(big)
    queue.add(small)
    first = queue.take(max_rows=4)
    assert [(p.start, p.stop, p.last) for p in first] == [(0, 4, False)]
    assert queue.head is big and queue.rows == 7
    second = queue.take(max_rows=8)
    assert [(p.request, p.start, p.stop) for p in second] == [(big, 4, 10), (small, 0, 1)]
    assert second[0].last and len(queue) == 0 and queue.rows == 0


def test_the_plan_decides_how_many_rows_and_is_clamped():
    asked = []
    queue = RowQueue(plan=lambda op, available: asked.append((op, available)) or 99)
    queue.add(request("score", 5))
    assert sum(p.size for p in queue.take(max_rows=4)) == 4  # 99 clamped to the available 4
    assert asked == [("score", 4)]
    queue = RowQueue(plan=lambda op, available: 0)
    queue.add(request("score", 3))
    assert sum(p.size for p in queue.take(max_rows=4)) == 1  # at least one row


def test_a_failing_plan_takes_every_row(caplog):
    def broken(op: str, available: int) -> int:
        raise ValueError("no costs")

    queue = RowQueue(plan=broken)
    queue.add(request("score", 3))
    assert sum(p.size for p in queue.take(max_rows=8)) == 3
    assert "the batch plan failed" in caplog.text


def test_expire_removes_exactly_the_requests_past_their_deadline():
    queue = RowQueue()
    late, on_time, forever = (
        request("encode", 2, deadline=1.0),
        request("encode", 1, deadline=5.0),
        request("encode", 1),
    )
    for r in (late, on_time, forever):
        queue.add(r)
    assert queue.expire(now=1.0) == [late]
    assert list(queue) == [on_time, forever] and queue.rows == 2


def test_waiting_counts_the_rows_a_batch_of_one_key_could_take():
    queue = RowQueue()
    for r in (request("encode", 2), request("decode", 5), request("encode", 3)):
        queue.add(r)
    assert queue.waiting(queue.head.key) == 5


def test_the_arrival_gap_is_a_moving_average_with_long_gaps_capped():
    queue = RowQueue(gap_cap_s=0.004)
    queue.add(request("encode", 1, at=0.0))
    queue.add(request("encode", 1, at=0.001))
    assert queue.gap_s == 0.001  # the first gap is taken as is
    queue.add(request("encode", 1, at=10.0))  # counts as the cap, not as ten seconds
    assert abs(queue.gap_s - (0.001 + 0.1 * (0.004 - 0.001))) < 1e-12


def test_an_empty_queue_gives_no_batch():
    assert RowQueue().take(max_rows=8) == []
