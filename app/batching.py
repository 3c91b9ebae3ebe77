"""Dynamic batching: many callers' rows, one model call at a time, off the event loop.

Each model gets a `Lane` (`batcher.lane(run, plan=...)`); callers `lane.submit(op, rows)`.
A collector task takes turns between the lanes that have rows waiting, forms each
batch from one lane's `RowQueue` (`app.rowqueue`: one key, at most `max_batch_size`
rows, as the plan says) and hands it to the one worker thread, which owns every model
call; each caller gets back exactly its own rows (`app.rows`). Rows of different lanes
never share a forward pass, and a busy lane cannot starve another: after a lane's
batch, every other lane with rows waiting has its turn first.

Scheduling is work-conserving. A request that arrives while the worker is idle runs
at once. Requests that arrive while it is busy queue up and form the next batch,
which waits for company until it is full or its oldest request has waited
`max_wait_ms` (0: it never waits), and only while the next request of that lane is
expected within that window (by the mean gap between recent arrivals): at a light load
nobody is coming soon, and waiting would only add latency. `max_queue` bounds the rows
waiting in all lanes together.

Errors a caller of `Lane.submit` can get::

    BatchingError
    ├── QueueFullError          refused at once: too many rows already waiting
    ├── DeadlineExceededError   not finished by its deadline; its queued rows are dropped
    ├── BatcherClosedError      not accepting: draining, retired or stopped
    └── NonFiniteOutputError    this request's own output rows hold NaN or inf

    app.rows.BatchOutputError (a RuntimeError)  run() broke its contract
    any exception run() raises                   given, as is, to every request of that batch
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from app.rowqueue import Piece, PlanFn, Request, RowQueue
from app.rows import Outputs, check_outputs, concatenate, non_finite_pieces, split

logger = logging.getLogger(__name__)

RunFn = Callable[[str, torch.Tensor], Outputs]


class BatchingError(Exception):
    """Base of the errors the batcher itself gives a caller."""


class QueueFullError(BatchingError):
    """Refused at once: queued rows plus this request's would exceed `max_queue`."""


class DeadlineExceededError(BatchingError):
    """The request was still queued, or not finished, at its deadline."""


class BatcherClosedError(BatchingError):
    """Not accepting requests: the batcher is not started, draining or stopped, or the
    lane was retired."""


class NonFiniteOutputError(BatchingError):
    """The model returned NaN or inf for this request's rows (a poison input)."""


@dataclass(frozen=True)
class BatchStats:
    """One model call, for metrics and logs; given to `on_batch` after every call."""

    batch_id: int
    op: str
    rows: int
    requests: int
    queue_wait_s: tuple[float, ...]  # per request: from submit to this batch's dispatch
    model_s: float  # time in the worker: concatenation, run(), checks and split
    error: BaseException | None
    model: str = ""  # the lane's
    version: str = ""


@dataclass(frozen=True)
class Outcome:
    """What `submit` returns: every output has leading dim == rows submitted, in order."""

    outputs: Outputs
    batch_ids: tuple[int, ...]  # the batches this request's rows ran in


@dataclass(frozen=True)
class _Computed:
    outputs: list[Outputs]  # per piece; the whole request's on its last piece
    non_finite: list[bool] | None  # per piece; None when every row is finite
    model_s: float
    error: Exception | None = None  # from run() or its checks; then `outputs` is empty


class Lane:
    """One model's way into the shared worker: its `run`, its queue, its callers."""

    def __init__(
        self, batcher: Batcher, run: RunFn, plan: PlanFn | None, model: str, version: str
    ) -> None:
        self.model, self.version = model, version  # labels for metrics
        self.run = run
        self.queue = RowQueue(plan, gap_cap_s=2 * batcher.max_wait_s)
        self.closed = False
        self.running = False  # a batch of this lane is in the worker
        self.live: dict[Request, asyncio.Future[Outcome]] = {}  # submit has not returned
        self.idle = asyncio.Event()  # nothing live and no batch in the worker
        self.idle.set()
        self.batcher = batcher

    @property
    def accepting(self) -> bool:
        return self.batcher.accepting and not self.closed

    @property
    def queued_rows(self) -> int:
        return self.queue.rows

    @property
    def in_flight_requests(self) -> int:
        return len(self.live)

    async def submit(
        self, op: str, rows: torch.Tensor, *, deadline: float | None = None
    ) -> Outcome:
        """Run `rows` (N, ...) through `op`; `deadline` is a `time.monotonic()` value.

        Refusals (`BatcherClosedError`, `QueueFullError`) are raised before any await.
        """
        return await self.batcher._submit(self, op, rows, deadline)

    def close(self) -> None:
        """Stop accepting; everything already accepted still completes."""
        self.closed = True

    async def drain(self, timeout: float) -> bool:
        """Wait until every accepted request has finished; False if `timeout` ran out."""
        return await wait_for(self.idle, timeout)


class Batcher:
    """Coalesces concurrent `submit` calls into `run(op, batch)` calls on one thread.

    Use as `async with Batcher(...) as batcher:`. Leaving the block stops accepting,
    finishes everything accepted, then stops the worker; after `abort()`, or if that
    wait is cancelled, what is left fails with `BatcherClosedError` instead.
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("need max_batch_size >= 1, max_queue >= 1 and max_wait_ms >= 0")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._lanes: list[Lane] = []  # in turn order: the next lane to serve first
        self._batch_ids = itertools.count(1)
        self._busy = False
        self._idle_since = float("-inf")  # when the worker last finished a batch
        self._started = self._closed = self._aborted = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._collector: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()  # a queue or the state changed
        self._idle = asyncio.Event()  # nothing live in any lane and the worker is free
        self._idle.set()

    def lane(
        self, run: RunFn, *, plan: PlanFn | None = None, model: str = "", version: str = ""
    ) -> Lane:
        """A new lane for a model whose batched call is `run`."""
        lane = Lane(self, run, plan, model, version)
        self._lanes.append(lane)
        return lane

    async def retire(self, lane: Lane, timeout: float) -> bool:
        """Close `lane`, let what it accepted finish within `timeout`, then drop it.

        Whatever is still unfinished then fails with `BatcherClosedError`; False if so.
        """
        lane.close()
        drained = await lane.drain(timeout)
        self._fail_lane(lane, BatcherClosedError("the model was unloaded before this finished"))
        if lane in self._lanes:
            self._lanes.remove(lane)
        self._update_idle(lane)
        return drained

    @property
    def queued_rows(self) -> int:
        return sum(lane.queue.rows for lane in self._lanes)

    @property
    def accepting(self) -> bool:
        return self._started and not self._closed

    @property
    def in_flight_requests(self) -> int:
        return sum(len(lane.live) for lane in self._lanes)

    async def __aenter__(self) -> Batcher:
        if self._started:
            raise RuntimeError("a Batcher can be started once")
        self._started = True
        self._collector = asyncio.create_task(self._collect(), name="batcher-collector")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        assert self._collector is not None
        try:
            await asyncio.wait([self._collector])  # it ends once drained, aborted or failed
        finally:
            if not self._collector.done():  # this wait was cancelled: give up on what is left
                self.abort()
            self._executor.shutdown(wait=not self._aborted, cancel_futures=True)
        if not self._collector.cancelled():
            self._collector.result()  # a collector bug surfaces here

    def abort(self) -> None:
        """Stop at once: unfinished requests fail with `BatcherClosedError`.

        For when `drain` has run out of time: leaving the context then neither finishes
        what is queued nor waits for a model call already running.
        """
        self.close()
        self._aborted = True
        if self._collector is not None:
            self._collector.cancel()
        self._fail_all(BatcherClosedError("the batcher stopped before this request finished"))

    def close(self) -> None:
        """Stop accepting; everything already accepted still completes."""
        self._closed = True
        self._wakeup.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until every accepted request has finished; False if `timeout` ran out."""
        return await wait_for(self._idle, timeout)

    async def _submit(
        self, lane: Lane, op: str, rows: torch.Tensor, deadline: float | None
    ) -> Outcome:
        if not lane.accepting:
            raise BatcherClosedError("the batcher is not accepting requests")
        if rows.dim() == 0 or len(rows) == 0:
            raise ValueError("rows must have shape (N, ...) with N >= 1")
        queued = self.queued_rows
        if queued + len(rows) > self._max_queue:
            raise QueueFullError(
                f"{queued} rows queued; {len(rows)} more would exceed {self._max_queue}"
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError("the deadline had passed before the request was queued")
        future = asyncio.get_running_loop().create_future()
        request = Request(op, rows, now, deadline)
        lane.queue.add(request)
        lane.live[request] = future
        lane.idle.clear()
        self._idle.clear()
        self._wakeup.set()
        timeout = asyncio.timeout(None if deadline is None else deadline - now)
        try:
            async with timeout:
                return await future
        except TimeoutError:
            if timeout.expired():
                raise DeadlineExceededError("the request did not finish by its deadline") from None
            raise
        finally:  # cancelled, timed out or done: rows not yet taken are never computed
            lane.queue.remove(request)
            del lane.live[request]
            self._update_idle(lane)

    def _fail(self, lane: Lane, request: Request, error: BaseException) -> None:
        future = lane.live.get(request)
        if future is not None and not future.done():  # its caller may have gone
            future.set_exception(error)
        lane.queue.remove(request)

    def _fail_lane(self, lane: Lane, error: BaseException) -> None:
        for request in list(lane.live):
            self._fail(lane, request, error)

    def _fail_all(self, error: BaseException) -> None:
        for lane in self._lanes:
            self._fail_lane(lane, error)

    def _update_idle(self, lane: Lane) -> None:
        if not lane.live and not lane.running:
            lane.idle.set()
        if not self._busy and not any(other.live for other in self._lanes):
            self._idle.set()

    async def _collect(self) -> None:
        try:
            while await self._wait_for_work():
                lane = self._next_lane()
                await self._gather_company(lane)
                for request in lane.queue.expire(time.monotonic()):
                    self._fail(lane, request, DeadlineExceededError("the deadline passed"))
                pieces = lane.queue.take(self.max_batch_size)
                if pieces:
                    await self._run_batch(lane, pieces)
        except Exception:  # a bug here must not leave callers waiting forever
            logger.exception("the batch collector failed; the batcher is closed")
            self._closed = True
            self._fail_all(BatcherClosedError("the batcher failed"))
            raise

    async def _wait_for_work(self) -> bool:
        while not any(lane.queue for lane in self._lanes):
            if self._closed:
                return False
            self._wakeup.clear()
            await self._wakeup.wait()
        return True

    def _next_lane(self) -> Lane:
        """The first lane in turn order with rows waiting; it goes to the back of the turn."""
        index = next(i for i, lane in enumerate(self._lanes) if lane.queue)
        lane = self._lanes.pop(index)
        self._lanes.append(lane)
        return lane

    async def _gather_company(self, lane: Lane) -> None:
        """Let a batch fill while its oldest request is within `max_wait_ms` of arriving.

        A request that arrived while the worker was idle runs at once: no lone request
        pays a batching window; nor does a batch wait when, at the lane's recent arrival
        rate, no other request would come before the window closes.
        """
        queue, head = lane.queue, lane.queue.head
        if head is None or head.submitted >= self._idle_since:
            return
        until = head.submitted + self.max_wait_s
        while (
            not self._closed
            and queue.head is head
            and queue.waiting(head.key) < self.max_batch_size
        ):
            remaining = until - time.monotonic()
            if remaining <= 0 or queue.gap_s > remaining:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    async def _run_batch(self, lane: Lane, pieces: list[Piece]) -> None:
        batch_id = next(self._batch_ids)
        op = pieces[0].request.op
        dispatched = time.monotonic()
        waits = tuple(dispatched - piece.request.submitted for piece in pieces)
        loop = asyncio.get_running_loop()
        self._busy = lane.running = True
        try:
            computed = await loop.run_in_executor(self._executor, _compute, lane.run, op, pieces)
        finally:
            self._busy = lane.running = False
            self._idle_since = time.monotonic()
            self._update_idle(lane)
        self._deliver(lane, pieces, computed, batch_id)
        rows = sum(piece.size for piece in pieces)
        stats = BatchStats(
            batch_id,
            op,
            rows,
            len(pieces),
            waits,
            computed.model_s,
            computed.error,
            lane.model,
            lane.version,
        )
        if self._on_batch is not None:
            try:
                self._on_batch(stats)
            except Exception:
                logger.exception("the on_batch callback failed; serving goes on")

    def _deliver(self, lane: Lane, pieces: list[Piece], computed: _Computed, batch_id: int) -> None:
        for i, piece in enumerate(pieces):
            request = piece.request
            if computed.error is not None:
                self._fail(lane, request, computed.error)
            elif computed.non_finite is not None and computed.non_finite[i]:
                message = f"the model returned NaN or inf for this request (batch {batch_id})"
                self._fail(lane, request, NonFiniteOutputError(message))
            else:
                request.batch_ids.append(batch_id)
                if not piece.last:
                    request.parts.append(computed.outputs[i])
                elif (future := lane.live.get(request)) is not None and not future.done():
                    future.set_result(Outcome(computed.outputs[i], tuple(request.batch_ids)))


def _compute(run: RunFn, op: str, pieces: list[Piece]) -> _Computed:
    """In the worker thread: one run() for the batch, split back per piece."""
    started = time.perf_counter()
    try:
        batch = concatenate(pieces)  # (B, ...)
        with torch.inference_mode():
            outputs = run(op, batch)
        check_outputs(outputs, len(batch))
        non_finite = non_finite_pieces(outputs, pieces)
        per_piece = split(outputs, pieces)
    except Exception as exc:
        return _Computed([], None, time.perf_counter() - started, exc)
    return _Computed(per_piece, non_finite, time.perf_counter() - started)


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True when it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
