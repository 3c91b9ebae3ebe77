"""The rows waiting for one model: plain bookkeeping, no event loop and no threads.

A `Request` is one caller's rows for one op. `RowQueue.take` forms the next batch: the
oldest request's key (op, row shape, dtype, device) plus the later requests with that
key, up to `max_rows` rows, as `Piece`s. How many of those rows it takes is the plan's
call when one is given (`plan(op, available) -> rows`, see `app.buckets`); a request
larger than a batch is split across consecutive batches and stays first in line for
the rest. The queue also keeps the moving average of the gap between arrivals, which
tells the batcher whether waiting for company is worth it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

PlanFn = Callable[[str, int], int]  # (op, rows available) -> rows the next batch takes
GAP_WEIGHT = 0.1  # of the newest gap in the moving average: about the last ten arrivals


@dataclass(eq=False)
class Request:
    op: str
    rows: torch.Tensor  # (N, ...)
    submitted: float  # time.monotonic()
    deadline: float | None = None
    taken: int = 0  # rows handed to batches so far
    queued: bool = False  # in a queue with rows not yet taken
    parts: list[tuple[torch.Tensor, ...]] = field(default_factory=list)  # outputs so far
    batch_ids: list[int] = field(default_factory=list)
    key: Hashable = None  # rows with one key concatenate

    def __post_init__(self) -> None:
        self.key = (self.op, self.rows.shape[1:], self.rows.dtype, self.rows.device)

    @property
    def left(self) -> int:
        return len(self.rows) - self.taken


@dataclass(frozen=True)
class Piece:
    request: Request
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def last(self) -> bool:
        """This piece ends its request: the request's output is complete after it."""
        return self.stop == len(self.request.rows)


class RowQueue:
    """Requests of one model in arrival order, and the rows they still wait with."""

    def __init__(self, plan: PlanFn | None = None, *, gap_cap_s: float = float("inf")) -> None:
        self._plan = plan
        self._requests: deque[Request] = deque()
        self._gap_cap_s = gap_cap_s  # a gap longer than this counts as this
        self._last_arrival = float("-inf")
        self.rows = 0  # rows queued and not yet taken
        self.gap_s = float("inf")  # moving average of the time between arrivals

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    @property
    def head(self) -> Request | None:
        return self._requests[0] if self._requests else None

    def add(self, request: Request) -> None:
        gap = request.submitted - self._last_arrival
        self._last_arrival = request.submitted
        if self.gap_s == float("inf"):
            self.gap_s = gap
        else:
            self.gap_s += GAP_WEIGHT * (min(gap, self._gap_cap_s) - self.gap_s)
        request.queued = True
        self._requests.append(request)
        self.rows += request.left

    def remove(self, request: Request) -> None:
        """Drop `request`'s rows not yet taken; nothing if it is not queued."""
        if request.queued:
            request.queued = False
            self._requests.remove(request)
            self.rows -= request.left

    def expire(self, now: float) -> list[Request]:
        """Remove and return the requests whose deadline is `now` or earlier."""
        expired = [r for r in self._requests if r.deadline is not None and r.deadline <= now]
        for request in expired:
            self.remove(request)
        return expired

    def waiting(self, key: Hashable) -> int:
        """Rows queued under `key`: what a batch of that key could take now."""
        return sum(request.left for request in self._requests if request.key == key)

    def take(self, max_rows: int) -> list[Piece]:
        """The next batch: the oldest request's key, up to `max_rows` rows, as planned."""
        if not self._requests:
            return []
        matching = [r for r in self._requests if r.key == self._requests[0].key]
        available = min(max_rows, sum(request.left for request in matching))
        room = self._planned(matching[0].op, available)
        pieces: list[Piece] = []
        for request in matching:
            if room == 0:
                break
            take = min(request.left, room)
            pieces.append(Piece(request, request.taken, request.taken + take))
            request.taken += take
            self.rows -= take
            room -= take
            if request.left == 0:
                request.queued = False
                self._requests.remove(request)
        return pieces

    def _planned(self, op: str, available: int) -> int:
        if self._plan is None:
            return available
        try:
            planned = self._plan(op, available)
        except Exception:
            logger.exception("the batch plan failed; the batch takes every row available")
            return available
        return min(max(int(planned), 1), available)
