import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import torch

from app.batching import (
    Batcher,
    BatcherClosedError,
    BatchStats,
    DeadlineExceededError,
    Lane,
    NonFiniteOutputError,
    QueueFullError,
)
from app.rows import BatchOutputError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TinyModel:
    """A real Linear layer as `run`; records every call and can be held at a gate or slowed."""

    def __init__(self, delay_s: float = 0.0) -> None:
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)
        self.delay_s = delay_s
        self.calls: list[tuple[str, int]] = []  # (op, rows) per run()
        self.seen: list[torch.Tensor] = []  # every batch run() received
        self.threads: set[int] = set()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, op: str, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls.append((op, len(batch)))
        self.seen.append(batch.clone())
        self.threads.add(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(5)
        time.sleep(self.delay_s)
        if (batch == -1).any():
            raise RuntimeError("poison row")
        return self.alone(op, batch)

    def alone(self, op: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What `rows` give when computed on their own, outside any batcher."""
        with torch.no_grad():
            scale = 1.0 if op == "encode" else 2.0
            return self.linear(rows) * scale, rows.sum(dim=1)

    def computed(self, rows: torch.Tensor) -> bool:
        """Whether run() ever received one of these rows."""
        return any((batch[:, None] == rows[None]).all(-1).any() for batch in self.seen)

    def batch_sizes(self) -> list[int]:
        return [rows for _, rows in self.calls]


@asynccontextmanager
async def make(model, **options: object) -> AsyncIterator[Lane]:
    """A started batcher with one lane for `model`: the lane."""
    settings: dict = {"max_batch_size": 8, "max_wait_ms": 0, "max_queue": 64} | options
    plan = settings.pop("plan", None)
    async with Batcher(**settings) as batcher:
        yield batcher.lane(model, plan=plan)


async def hold(lane: Lane, model: TinyModel, held_rows: torch.Tensor | None = None) -> asyncio.Task:
    """Occupy the worker with one request held at the model's gate; return its task."""
    model.gate.clear()
    model.entered.clear()
    held_rows = torch.full((1, 4), 100.0) if held_rows is None else held_rows
    task = asyncio.create_task(lane.submit("encode", held_rows))
    await until(model.entered.is_set)
    return task


async def until(condition, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.001)


def rows(n: int, start: float = 0.0) -> torch.Tensor:
    return torch.arange(start, start + 4 * n, dtype=torch.float32).reshape(n, 4)


async def test_run_happens_on_one_worker_thread_not_the_event_loop() -> None:
    model = TinyModel()
    async with make(model) as lane:
        for i in range(3):
            await lane.submit("encode", rows(1, i))
    assert len(model.threads) == 1
    assert threading.get_ident() not in model.threads


async def test_concurrent_requests_coalesce_and_each_gets_what_it_gets_alone() -> None:
    model = TinyModel(delay_s=0.005)
    inputs = [torch.randn(1, 4) for _ in range(32)]
    async with make(model) as lane:
        outcomes = await asyncio.gather(*(lane.submit("encode", x) for x in inputs))
    assert len(model.calls) < 32
    assert max(model.batch_sizes()) <= 8
    assert sum(model.batch_sizes()) == 32
    for x, outcome in zip(inputs, outcomes, strict=True):
        for got, alone in zip(outcome.outputs, model.alone("encode", x), strict=True):
            assert got.shape[0] == 1
            torch.testing.assert_close(got, alone)


async def test_lone_request_on_idle_worker_pays_no_batching_window() -> None:
    model = TinyModel()
    # a window far longer than a loaded machine can delay a lone row: paying the window
    # takes 10 s, not paying it well under half of that (it was 0.9 s under load 6)
    async with make(model, max_wait_ms=10_000) as lane:
        started = time.monotonic()
        await lane.submit("encode", rows(1))
        first = time.monotonic() - started
        await asyncio.sleep(0.01)  # the worker has finished and is idle again
        started = time.monotonic()
        await lane.submit("encode", rows(1))
        second = time.monotonic() - started
    assert first < 5.0
    assert second < 5.0


async def test_request_queued_behind_a_busy_worker_waits_for_company() -> None:
    model = TinyModel()
    async with make(model, max_wait_ms=300) as lane:
        held = await hold(lane, model)
        early = asyncio.create_task(lane.submit("encode", rows(1)))
        await until(lambda: lane.queued_rows == 1)
        model.gate.set()
        await until(held.done)
        await asyncio.sleep(0.02)  # the worker is free; `early` is within its window
        late = await lane.submit("encode", rows(1, 10))
        await early
    assert model.batch_sizes() == [1, 2]
    assert late.batch_ids == early.result().batch_ids


async def test_no_wait_for_company_when_arrivals_are_further_apart_than_the_window() -> None:
    model = TinyModel()
    async with make(model, max_wait_ms=300) as lane:
        for i in range(3):  # a light load: one request every 0.4 s, longer than the window
            await lane.submit("encode", rows(1, 10 * i))
            await asyncio.sleep(0.4)
        held = await hold(lane, model)
        queued = asyncio.create_task(lane.submit("encode", rows(1, 50)))
        await until(lambda: lane.queued_rows == 1)
        model.gate.set()
        await until(held.done)
        released = time.monotonic()
        await queued
        waited = time.monotonic() - released
    assert model.batch_sizes() == [1, 1, 1, 1, 1]
    assert waited < 0.15  # not the 300 ms window: nobody else was expected


async def test_max_batch_size_counts_rows_and_several_small_requests_share_a_batch() -> None:
    model = TinyModel()
    async with make(model, max_batch_size=4) as lane:
        held = await hold(lane, model)
        small = [asyncio.create_task(lane.submit("encode", rows(2, 10 * i))) for i in range(2)]
        await until(lambda: lane.queued_rows == 4)
        model.gate.set()
        await asyncio.gather(held, *small)
    assert model.batch_sizes() == [1, 4]


async def test_large_request_is_split_across_batches_and_reassembled_in_order() -> None:
    model = TinyModel()
    x = torch.randn(10, 4)
    async with make(model, max_batch_size=4) as lane:
        outcome = await lane.submit("encode", x)
    assert model.batch_sizes() == [4, 4, 2]
    assert len(outcome.batch_ids) == 3
    for got, alone in zip(outcome.outputs, model.alone("encode", x), strict=True):
        torch.testing.assert_close(got, alone)


async def test_batches_never_mix_ops_and_follow_the_oldest_waiting_request() -> None:
    model = TinyModel()
    ops = ["decode", "encode", "decode", "encode"]
    async with make(model) as lane:
        held = await hold(lane, model)
        tasks = []
        for i, op in enumerate(ops):
            tasks.append(asyncio.create_task(lane.submit(op, rows(1, 10 * i))))
            await until(lambda n=i + 1: lane.queued_rows == n)
        model.gate.set()
        outcomes = await asyncio.gather(held, *tasks)
    assert model.calls == [("encode", 1), ("decode", 2), ("encode", 2)]
    for i, op in enumerate(ops):
        torch.testing.assert_close(outcomes[i + 1].outputs[0], model.alone(op, rows(1, 10 * i))[0])


async def test_plan_decides_how_many_rows_a_batch_takes_and_the_rest_go_next() -> None:
    model = TinyModel()
    asked: list[tuple[str, int]] = []

    def at_most_two(op: str, available: int) -> int:
        asked.append((op, available))
        return min(available, 2)

    async with make(model, plan=at_most_two) as lane:
        held = await hold(lane, model)
        first = asyncio.create_task(lane.submit("encode", rows(2)))
        second = asyncio.create_task(lane.submit("encode", rows(3, 10)))
        await until(lambda: lane.queued_rows == 5)
        model.gate.set()
        outcomes = await asyncio.gather(held, first, second)
    assert model.batch_sizes() == [1, 2, 2, 1]
    assert asked == [("encode", 1), ("encode", 5), ("encode", 3), ("encode", 1)]
    assert len(outcomes[2].batch_ids) == 2  # split across the two batches after the first
    for got, alone in zip(outcomes[2].outputs, model.alone("encode", rows(3, 10)), strict=True):
        torch.testing.assert_close(got, alone)


@pytest.mark.parametrize("answer", [0, -3, 99])
async def test_plan_answers_outside_one_to_available_are_clamped(answer: int) -> None:
    model = TinyModel()
    async with make(model, max_batch_size=4, plan=lambda op, available: answer) as lane:
        outcome = await lane.submit("encode", rows(6))
    expected = [1] * 6 if answer < 1 else [4, 2]
    assert model.batch_sizes() == expected
    torch.testing.assert_close(outcome.outputs[0], model.alone("encode", rows(6))[0])


async def test_a_failing_plan_is_logged_and_the_batch_takes_every_row(caplog) -> None:
    model = TinyModel()

    def broken(op: str, available: int) -> int:
        raise ValueError("no costs")

    async with make(model, plan=broken) as lane:
        await lane.submit("encode", rows(3))
    assert model.batch_sizes() == [3]
    assert "the batch plan failed" in caplog.text


async def test_full_queue_refuses_before_any_await() -> None:
    model = TinyModel()
    async with make(model, max_queue=4) as lane:
        held = await hold(lane, model)
        queued = asyncio.create_task(lane.submit("encode", rows(3)))
        await until(lambda: lane.queued_rows == 3)
        refused = lane.submit("encode", rows(2))
        with pytest.raises(QueueFullError):
            refused.send(None)  # the first step raises: the caller never waits
        assert lane.queued_rows == 3
        fits = asyncio.create_task(lane.submit("encode", rows(1)))
        await until(lambda: lane.queued_rows == 4)
        model.gate.set()
        await asyncio.gather(held, queued, fits)


async def test_request_past_its_deadline_is_never_computed() -> None:
    model = TinyModel()
    async with make(model) as lane:
        held = await hold(lane, model)
        late_rows = rows(1, 50)
        deadline = time.monotonic() + 0.05
        with pytest.raises(DeadlineExceededError):
            await lane.submit("encode", late_rows, deadline=deadline)
        assert lane.queued_rows == 0
        model.gate.set()
        await held
        with pytest.raises(DeadlineExceededError):
            await lane.submit("encode", late_rows, deadline=time.monotonic() - 1)
    assert not model.computed(late_rows)


async def test_cancelled_request_is_never_computed() -> None:
    model = TinyModel()
    async with make(model) as lane:
        held = await hold(lane, model)
        gone_rows = rows(2, 50)
        gone = asyncio.create_task(lane.submit("encode", gone_rows))
        await until(lambda: lane.queued_rows == 2)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert lane.queued_rows == 0
        assert lane.in_flight_requests == 1
        model.gate.set()
        await held
    assert gone.cancelled()
    assert not model.computed(gone_rows)


async def test_request_expired_when_its_batch_forms_is_dropped_before_compute() -> None:
    model = TinyModel()
    async with make(model) as lane:
        held = await hold(lane, model)
        late_rows = rows(1, 50)
        late = asyncio.create_task(
            lane.submit("encode", late_rows, deadline=time.monotonic() + 0.05)
        )
        await until(lambda: lane.queued_rows == 1)
        model.gate.set()
        time.sleep(0.1)  # block the loop: the worker frees up and the deadline passes unseen
        with pytest.raises(DeadlineExceededError):
            await late
        await held
    assert model.batch_sizes() == [1]
    assert not model.computed(late_rows)


async def test_caller_leaving_mid_computation_does_not_disturb_the_batcher() -> None:
    model = TinyModel()
    async with make(model) as lane:
        for held_rows in (rows(1), torch.full((1, 4), -1.0)):  # a result, then an exception
            held = await hold(lane, model, held_rows)
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
            model.gate.set()
            assert await lane.drain(5)
        outcome = await lane.submit("encode", rows(1))
    assert held.cancelled()
    assert outcome.batch_ids == (3,)


async def test_model_exception_fails_only_its_batch_and_serving_goes_on() -> None:
    model = TinyModel()
    stats: list[BatchStats] = []
    async with make(model, on_batch=stats.append) as lane:
        held = await hold(lane, model)
        poisoned = asyncio.create_task(lane.submit("encode", torch.full((1, 4), -1.0)))
        neighbour = asyncio.create_task(lane.submit("encode", rows(1)))
        await until(lambda: lane.queued_rows == 2)
        model.gate.set()
        await held
        for task in (poisoned, neighbour):
            with pytest.raises(RuntimeError, match="poison row"):
                await task
        after = await lane.submit("encode", rows(1))
    assert after.outputs[0].shape == (1, 3)
    assert [s.error is not None for s in stats] == [False, True, False]


async def test_non_finite_output_goes_only_to_its_own_request() -> None:
    model = TinyModel()
    async with make(model) as lane:
        held = await hold(lane, model)
        bad = torch.tensor([[1.0, float("nan"), 0.0, 0.0]])
        poisoned = asyncio.create_task(lane.submit("encode", bad))
        healthy = asyncio.create_task(lane.submit("encode", rows(2)))
        await until(lambda: lane.queued_rows == 3)
        model.gate.set()
        await held
        with pytest.raises(NonFiniteOutputError):
            await poisoned
        outcome = await healthy
    assert model.batch_sizes() == [1, 3]
    torch.testing.assert_close(outcome.outputs[0], model.alone("encode", rows(2))[0])


async def test_finite_outputs_whose_sum_overflows_are_still_delivered() -> None:
    def huge(op: str, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = torch.full((len(batch), 4), 3e38)  # finite, but their float32 sum is inf
        out[batch[:, 0] < 0] = float("inf")  # a truly non-finite row where asked
        return (out,)

    async with make(huge) as lane:
        outcome = await lane.submit("encode", rows(3))
        with pytest.raises(NonFiniteOutputError):
            await lane.submit("encode", rows(1, -1))
    assert bool((outcome.outputs[0] == 3e38).all())


async def test_wrong_output_rows_fail_every_request_of_the_batch_with_a_clear_error() -> None:
    calls: list[int] = []

    def one_row_short(op: str, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append(len(batch))
        return (batch[:-1] if len(batch) > 1 else batch,)

    async with make(one_row_short) as lane:
        together = [lane.submit("encode", rows(1)), lane.submit("encode", rows(2, 10))]
        failures = await asyncio.gather(*together, return_exceptions=True)
        ok = await lane.submit("encode", rows(1))
    assert calls == [3, 1]
    for failure in failures:
        assert isinstance(failure, BatchOutputError)
        assert "one output row per input row" in str(failure)
    assert ok.outputs[0].shape == (1, 4)


async def test_on_batch_reports_every_call_and_its_failures_do_not_break_serving() -> None:
    model = TinyModel()
    stats: list[BatchStats] = []

    def broken_metrics(batch: BatchStats) -> None:
        stats.append(batch)
        raise ValueError("metrics backend down")

    async with make(model, max_batch_size=4, on_batch=broken_metrics) as lane:
        outcome = await lane.submit("decode", rows(6))
    assert [(s.op, s.rows, s.requests, s.error) for s in stats] == [
        ("decode", 4, 1, None),
        ("decode", 2, 1, None),
    ]
    assert tuple(s.batch_id for s in stats) == outcome.batch_ids
    assert all(len(s.queue_wait_s) == 1 and s.model_s >= 0 for s in stats)


async def test_close_refuses_new_work_and_finishes_what_was_accepted() -> None:
    model = TinyModel()
    async with make(model) as lane:
        held = await hold(lane, model)
        accepted = asyncio.create_task(lane.submit("encode", rows(2)))
        await until(lambda: lane.queued_rows == 2)
        lane.close()
        assert not lane.accepting
        with pytest.raises(BatcherClosedError):
            await lane.submit("encode", rows(1))
        assert not await lane.drain(0.05)
        model.gate.set()
        assert await lane.drain(5)
        assert (await accepted).outputs[0].shape == (2, 3)
        assert lane.in_flight_requests == 0
    await held


async def test_leaving_the_context_finishes_accepted_work_then_stops_the_worker() -> None:
    model = TinyModel(delay_s=0.005)
    async with make(model, max_batch_size=2) as lane:
        assert lane.accepting
        tasks = [asyncio.create_task(lane.submit("encode", rows(1, i))) for i in range(6)]
        await until(lambda: lane.in_flight_requests == 6)
    assert all(task.done() and task.exception() is None for task in tasks)
    assert sum(model.batch_sizes()) == 6
    assert not any(t.ident in model.threads for t in threading.enumerate())
    with pytest.raises(BatcherClosedError):
        await lane.submit("encode", rows(1))


async def test_abort_fails_what_is_left_without_waiting_for_the_model() -> None:
    model = TinyModel()
    async with make(model) as lane:
        held = await hold(lane, model)
        queued = asyncio.create_task(lane.submit("encode", rows(1)))
        await until(lambda: lane.queued_rows == 1)
        lane.close()
        assert not await lane.drain(0.05)
        lane.batcher.abort()
    try:
        assert any(t.ident in model.threads for t in threading.enumerate())  # still in run()
        for task in (held, queued):
            with pytest.raises(BatcherClosedError):
                await task
        assert model.batch_sizes() == [1]  # the held call is still running; nothing else ran
        assert await lane.drain(1)
    finally:
        model.gate.set()


async def test_lanes_never_share_a_batch_and_a_flooded_lane_does_not_starve_another() -> None:
    flooded, quiet = TinyModel(), TinyModel()
    order: list[str] = []

    def tracked(name: str, model: TinyModel):
        def run(op: str, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
            order.append(name)
            return model(op, batch)

        return run

    async with Batcher(max_batch_size=4, max_wait_ms=0, max_queue=64) as batcher:
        busy = batcher.lane(tracked("flooded", flooded), model="flooded")
        other = batcher.lane(tracked("quiet", quiet), model="quiet")
        held = await hold(busy, flooded)
        flood = [asyncio.create_task(busy.submit("encode", rows(4, 10 * i))) for i in range(3)]
        await until(lambda: batcher.queued_rows == 12)
        lone = asyncio.create_task(other.submit("encode", rows(1, 99)))
        await until(lambda: batcher.queued_rows == 13)
        flooded.gate.set()
        outcomes = await asyncio.gather(held, *flood, lone)
    assert order == ["flooded", "quiet", "flooded", "flooded", "flooded"]
    assert quiet.batch_sizes() == [1] and flooded.batch_sizes() == [1, 4, 4, 4]
    torch.testing.assert_close(outcomes[-1].outputs[0], quiet.alone("encode", rows(1, 99))[0])


async def test_retiring_a_lane_finishes_what_it_accepted_then_refuses() -> None:
    model = TinyModel()
    async with make(model) as lane:
        held = await hold(lane, model)
        queued = asyncio.create_task(lane.submit("encode", rows(2)))
        await until(lambda: lane.queued_rows == 2)
        retiring = asyncio.create_task(lane.batcher.retire(lane, timeout=5))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosedError):
            await lane.submit("encode", rows(1))
        model.gate.set()
        assert await retiring
        assert (await queued).outputs[0].shape == (2, 3) and (await held).outputs[0].shape == (1, 3)
        assert lane.batcher.accepting and lane.batcher.in_flight_requests == 0


async def test_retiring_fails_what_did_not_finish_in_time() -> None:
    model = TinyModel()
    async with make(model) as lane:
        held = await hold(lane, model)
        assert not await lane.batcher.retire(lane, timeout=0.05)
        with pytest.raises(BatcherClosedError):
            await held
        model.gate.set()
