"""Batch-size buckets: the sizes a model is warmed up at, and the plan that uses their cost.

Every batch is padded up to the next bucket so that the model only ever sees shapes it
was warmed up with; padded rows are computed and dropped. By default the buckets are
the powers of two below `max_batch_size`, and the maximum itself.

`BucketCosts` keeps the fastest time measured per (op, bucket) and answers the
batcher's question "how many of the queued rows should the next batch take": padded
up to its bucket, a batch costs the whole bucket (33 rows cost 64 rows' time, nearly
double 32), and past some size a bigger batch only spills out of cache. So a batch
takes a smaller bucket's worth when that batch plus the rest, each run on its own and
padded, cost less than all of them at once, as Triton's preferred batch sizes do. The
rest usually find company in the next batch, so this never makes the rows queued now
finish later.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field


def default_sizes(max_batch_size: int) -> set[int]:
    return {1 << k for k in range(max_batch_size.bit_length())}


@dataclass(frozen=True)
class Buckets:
    """Increasing batch sizes; the last is the largest batch."""

    sizes: tuple[int, ...]

    @classmethod
    def up_to(cls, max_batch_size: int, warmup: tuple[int, ...] = ()) -> Buckets:
        """`warmup` (default: the powers of two below `max_batch_size`) and the maximum."""
        sizes = set(warmup) or default_sizes(max_batch_size)
        return cls(tuple(sorted(sizes | {max_batch_size})))

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    def of(self, rows: int) -> int:
        """The bucket `rows` are padded up to (`rows` itself past the largest)."""
        index = bisect_left(self.sizes, rows)
        return self.sizes[index] if index < len(self.sizes) else rows


@dataclass
class BucketCosts:
    """The fastest call seen per (op, bucket): the cost with the least interference."""

    buckets: Buckets
    seconds: dict[tuple[str, int], float] = field(default_factory=dict)

    def record(self, op: str, bucket: int, seconds: float) -> None:
        key = (op, bucket)
        self.seconds[key] = min(self.seconds.get(key, float("inf")), seconds)

    def plan(self, op: str, available: int) -> int:
        """How many of `available` queued rows the next batch of `op` takes."""
        of, cost = self.buckets.of, self.seconds
        try:
            best, best_cost = available, cost[(op, of(available))]
            for part in reversed(self.buckets.sizes):  # on a tie the bigger batch goes first
                if part >= available:
                    continue
                split = cost[(op, part)] + cost[(op, of(available - part))]
                if split < best_cost:
                    best, best_cost = part, split
        except KeyError:  # not measured yet
            return available
        return best
