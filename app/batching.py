"""Dynamic batching: many callers' rows, one model call at a time, off the event loop.

Callers `submit(op, rows)`. A collector task coalesces queued rows that share an op
into batches of at most `max_batch_size` rows and hands each batch to one worker
thread, which owns every model call; each caller gets back exactly its own rows.

Scheduling is work-conserving. A request that arrives while the worker is idle runs
at once. Requests that arrive while it is busy queue up and form the next batch,
which waits for company until it is full or its oldest request has waited
`max_wait_ms` (0: it never waits), and only while the next request is expected
within that window (by the mean gap between recent arrivals): at a light load nobody is
coming soon, and waiting would only add latency. The next batch takes the op (and row shape) of the
oldest queued request plus the later requests that match, so no op starves another;
a request larger than a batch is split across consecutive batches.

How many of the matching rows a batch takes is the `plan`'s call when one is given
(`plan(op, available) -> rows`): a model padded to fixed batch sizes may run 33 rows
faster as 32 now and 1 next than as one batch padded to 64, as Triton's preferred batch
sizes do. The rows left over stay first in line.

Errors a caller of `Batcher.submit` can get::

    BatchingError
    ├── QueueFullError          refused at once: too many rows already waiting
    ├── DeadlineExceededError   not finished by its deadline; its queued rows are dropped
    ├── BatcherClosedError      not accepting: draining or stopped
    └── NonFiniteOutputError    this request's own output rows hold NaN or inf

    BatchOutputError (a RuntimeError)  run() did not return one output row per input row
    any exception run() raises          given, as is, to every request of that batch
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

RunFn = Callable[[str, torch.Tensor], tuple[torch.Tensor, ...]]
GAP_WEIGHT = 0.1  # of the newest gap in the moving average: about the last ten arrivals
PlanFn = Callable[[str, int], int]  # (op, rows available) -> rows the next batch takes


class BatchingError(Exception):
    """Base of the errors the batcher itself gives a caller."""


class QueueFullError(BatchingError):
    """Refused at once: queued rows plus this request's would exceed `max_queue`."""


class DeadlineExceededError(BatchingError):
    """The request was still queued, or not finished, at its deadline."""


class BatcherClosedError(BatchingError):
    """The batcher is not accepting requests: not started, draining or stopped."""


class NonFiniteOutputError(BatchingError):
    """The model returned NaN or inf for this request's rows (a poison input)."""


class BatchOutputError(RuntimeError):
    """`run` broke its contract: a tuple of tensors, one output row per input row."""


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


@dataclass(frozen=True)
class Outcome:
    """What `submit` returns: every output has leading dim == rows submitted, in order."""

    outputs: tuple[torch.Tensor, ...]
    batch_ids: tuple[int, ...]  # the batches this request's rows ran in


@dataclass(eq=False)
class _Request:
    key: Hashable  # (op, row shape, dtype, device): rows with one key concatenate
    op: str
    rows: torch.Tensor  # (N, ...)
    deadline: float | None
    future: asyncio.Future[Outcome]
    submitted: float
    taken: int = 0  # rows handed to batches so far
    queued: bool = True  # in the queue with rows not yet taken
    parts: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    batch_ids: list[int] = field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.rows) - self.taken


@dataclass(frozen=True)
class _Piece:
    request: _Request
    start: int
    stop: int


@dataclass(frozen=True)
class _Computed:
    outputs: list[tuple[torch.Tensor, ...]]  # per piece; the whole request's on its last piece
    non_finite: list[bool] | None  # per piece; None when every row is finite
    model_s: float
    error: Exception | None = None  # from run() or its checks; then `outputs` is empty


class Batcher:
    """Coalesces concurrent `submit` calls into `run(op, batch)` calls on one thread.

    Use as `async with Batcher(...) as batcher:`. Leaving the block stops accepting,
    finishes everything accepted, then stops the worker; after `abort()`, or if that
    wait is cancelled, what is left fails with `BatcherClosedError` instead.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        plan: PlanFn | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("need max_batch_size >= 1, max_queue >= 1 and max_wait_ms >= 0")
        self._run = run
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._plan = plan
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._live: set[_Request] = set()  # accepted, and submit has not returned yet
        self._batch_ids = itertools.count(1)
        self._busy = False
        self._idle_since = float("-inf")  # when the worker last finished a batch
        self._last_arrival = float("-inf")
        # moving average of the time between submits; a gap longer than twice the window
        # counts as twice the window, so that a burst after a quiet spell batches at once
        self._gap_s = float("inf")
        self._started = self._closed = self._aborted = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._collector: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()  # the queue or the state changed
        self._idle = asyncio.Event()  # nothing live and the worker is free
        self._idle.set()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def accepting(self) -> bool:
        return self._started and not self._closed

    @property
    def in_flight_requests(self) -> int:
        return len(self._live)

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
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def submit(
        self, op: str, rows: torch.Tensor, *, deadline: float | None = None
    ) -> Outcome:
        """Run `rows` (N, ...) through `op`; `deadline` is a `time.monotonic()` value.

        Refusals (`BatcherClosedError`, `QueueFullError`) are raised before any await.
        """
        if not self.accepting:
            raise BatcherClosedError("the batcher is not accepting requests")
        if rows.dim() == 0 or len(rows) == 0:
            raise ValueError("rows must have shape (N, ...) with N >= 1")
        if self._queued_rows + len(rows) > self._max_queue:
            raise QueueFullError(
                f"{self._queued_rows} rows queued; {len(rows)} more would exceed {self._max_queue}"
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError("the deadline had passed before the request was queued")
        future = asyncio.get_running_loop().create_future()
        key = (op, rows.shape[1:], rows.dtype, rows.device)
        request = _Request(key, op, rows, deadline, future, submitted=now)
        self._enqueue(request)
        timeout = asyncio.timeout(None if deadline is None else deadline - now)
        try:
            async with timeout:
                return await future
        except TimeoutError:
            if timeout.expired():
                raise DeadlineExceededError("the request did not finish by its deadline") from None
            raise
        finally:  # cancelled, timed out or done: rows not yet taken are never computed
            self._unqueue(request)
            self._live.discard(request)
            self._update_idle()

    def _enqueue(self, request: _Request) -> None:
        gap = request.submitted - self._last_arrival
        self._last_arrival = request.submitted
        self._gap_s = (
            gap
            if self._gap_s == float("inf")
            else self._gap_s + GAP_WEIGHT * (min(gap, 2 * self._max_wait_s) - self._gap_s)
        )
        self._queue.append(request)
        self._queued_rows += len(request.rows)
        self._live.add(request)
        self._idle.clear()
        self._wakeup.set()

    def _unqueue(self, request: _Request) -> None:
        if request.queued:
            request.queued = False
            self._queue.remove(request)
            self._queued_rows -= request.left

    def _fail(self, request: _Request, error: BaseException) -> None:
        if not request.future.done():  # its caller may have gone
            request.future.set_exception(error)
        self._unqueue(request)

    def _fail_all(self, error: BaseException) -> None:
        for request in list(self._live):
            self._fail(request, error)

    def _update_idle(self) -> None:
        if not self._live and not self._busy:
            self._idle.set()

    async def _collect(self) -> None:
        try:
            while await self._wait_for_work():
                await self._gather_company()
                pieces = self._take_batch()
                if pieces:
                    await self._run_batch(pieces)
        except Exception:  # a bug here must not leave callers waiting forever
            logger.exception("the batch collector failed; the batcher is closed")
            self._closed = True
            self._fail_all(BatcherClosedError("the batcher failed"))
            raise

    async def _wait_for_work(self) -> bool:
        while not self._queue:
            if self._closed:
                return False
            self._wakeup.clear()
            await self._wakeup.wait()
        return True

    async def _gather_company(self) -> None:
        """Let a batch fill while its oldest request is within `max_wait_ms` of arriving.

        A request that arrived while the worker was idle runs at once: no lone request
        pays a batching window; nor does a batch wait when, at the recent arrival rate,
        no other request would come before the window closes.
        """
        head = self._queue[0]
        if head.submitted >= self._idle_since:
            return
        until = head.submitted + self._max_wait_s
        while (
            not self._closed
            and self._queue
            and self._queue[0] is head
            and self._rows_waiting(head.key) < self._max_batch_size
        ):
            remaining = until - time.monotonic()
            if remaining <= 0 or self._gap_s > remaining:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _rows_waiting(self, key: Hashable) -> int:
        return sum(request.left for request in self._queue if request.key == key)

    def _take_batch(self) -> list[_Piece]:
        """Take the oldest request's key, then later requests with that key, up to a batch."""
        batch = self._drop_expired_and_match()
        if not batch:
            return []
        available = min(self._max_batch_size, sum(request.left for request in batch))
        room = self._planned_rows(batch[0].op, available)
        pieces: list[_Piece] = []
        for request in batch:
            if room == 0:
                break
            take = min(request.left, room)
            pieces.append(_Piece(request, request.taken, request.taken + take))
            self._queued_rows -= take
            request.taken += take
            room -= take
            if request.left == 0:
                self._unqueue(request)
        return pieces

    def _drop_expired_and_match(self) -> list[_Request]:
        """Fail queued requests past their deadline; the rest that share the oldest's key."""
        now = time.monotonic()
        matching: list[_Request] = []
        for request in list(self._queue):
            if request.deadline is not None and request.deadline <= now:
                self._fail(request, DeadlineExceededError("the deadline passed while queued"))
            elif not matching or request.key == matching[0].key:
                matching.append(request)
        return matching

    def _planned_rows(self, op: str, available: int) -> int:
        if self._plan is None:
            return available
        try:
            planned = self._plan(op, available)
        except Exception:
            logger.exception("the batch plan failed; the batch takes every row available")
            return available
        return min(max(int(planned), 1), available)

    async def _run_batch(self, pieces: list[_Piece]) -> None:
        batch_id = next(self._batch_ids)
        op = pieces[0].request.op
        dispatched = time.monotonic()
        waits = tuple(dispatched - piece.request.submitted for piece in pieces)
        loop = asyncio.get_running_loop()
        self._busy = True
        try:
            computed = await loop.run_in_executor(self._executor, self._compute, op, pieces)
        finally:
            self._busy = False
            self._idle_since = time.monotonic()
            self._update_idle()
        self._deliver(pieces, computed, batch_id)
        rows = sum(piece.stop - piece.start for piece in pieces)
        stats = BatchStats(batch_id, op, rows, len(pieces), waits, computed.model_s, computed.error)
        if self._on_batch is not None:
            try:
                self._on_batch(stats)
            except Exception:
                logger.exception("the on_batch callback failed; serving goes on")

    def _compute(self, op: str, pieces: list[_Piece]) -> _Computed:
        """In the worker thread: one run() for the batch, split back per piece."""
        started = time.perf_counter()
        sizes = [piece.stop - piece.start for piece in pieces]
        try:
            chunks = [piece.request.rows[piece.start : piece.stop] for piece in pieces]
            batch = torch.cat(chunks) if len(chunks) > 1 else chunks[0]  # (B, ...)
            with torch.inference_mode():
                outputs = self._run(op, batch)
            _check_outputs(outputs, len(batch))
            non_finite = None
            if not _all_finite(outputs):
                finite = _finite_rows(outputs)  # (B,)
                non_finite = [not bool(ok.all()) for ok in torch.split(finite, sizes)]
            if len(pieces) == 1:
                per_piece = [outputs]
            else:
                per_piece = list(zip(*(torch.split(out, sizes) for out in outputs), strict=True))
            for i, piece in enumerate(pieces):  # a split request's last piece: reassemble
                if piece.request.parts and piece.stop == len(piece.request.rows):
                    parts = zip(*piece.request.parts, per_piece[i], strict=True)
                    per_piece[i] = tuple(torch.cat(part) for part in parts)
        except Exception as exc:
            return _Computed([], None, time.perf_counter() - started, exc)
        return _Computed(per_piece, non_finite, time.perf_counter() - started)

    def _deliver(self, pieces: list[_Piece], computed: _Computed, batch_id: int) -> None:
        for i, piece in enumerate(pieces):
            request = piece.request
            if computed.error is not None:
                self._fail(request, computed.error)
            elif computed.non_finite is not None and computed.non_finite[i]:
                message = f"the model returned NaN or inf for this request (batch {batch_id})"
                self._fail(request, NonFiniteOutputError(message))
            else:
                request.batch_ids.append(batch_id)
                if piece.stop < len(request.rows):
                    request.parts.append(computed.outputs[i])
                elif not request.future.done():
                    outcome = Outcome(computed.outputs[i], tuple(request.batch_ids))
                    request.future.set_result(outcome)


def _check_outputs(outputs: object, rows: int) -> None:
    if not (isinstance(outputs, tuple) and outputs and all(torch.is_tensor(o) for o in outputs)):
        raise BatchOutputError(f"run() must return a non-empty tuple of tensors: {outputs!r:.60}")
    leading = [output.shape[0] if output.dim() else None for output in outputs]
    if any(n != rows for n in leading):
        raise BatchOutputError(
            f"a batched call must return one output row per input row: "
            f"{rows} rows in, leading dims {leading} out"
        )


def _all_finite(outputs: tuple[torch.Tensor, ...]) -> bool:
    """True when every value is finite: one sum per output, ~20x cheaper than the per-row
    check on a batch of images. NaN or inf makes the sum non-finite; finite values whose
    sum overflows only send the batch to the exact check."""
    return all(math.isfinite(float(output.sum())) for output in outputs)


def _finite_rows(outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(B,) bool: True where every output of that row is finite."""
    finite = None
    for output in outputs:
        ok = torch.isfinite(output)
        ok = ok.flatten(1).all(dim=1) if ok.dim() > 1 else ok
        finite = ok if finite is None else finite & ok.to(finite.device)
    assert finite is not None
    return finite
