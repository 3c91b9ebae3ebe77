"""Batch invariance: a row's numbers must not depend on the rows computed beside it.

CPU kernels choose their blocking by shape. A matrix product over 3 rows and one over 64
accumulate the same row in a different order, and a row at the edge of a tile can take
another path than a row inside one, so the same input comes out different in the last
bits depending on what else was batched: a pixel off by 1/255, a score off by 1e-7.
Those kernels keep a row's arithmetic fixed once the row count is a multiple of their
tile. So every module call is padded to a multiple of a *quantum* (the padded rows are
computed and dropped), and the smallest quantum that holds is found for each op of the
model on this machine when it loads: probe rows are computed among random rows at every
row count the runtime will call the module with, at several positions, and their outputs
compared bit for bit. A model whose op holds at no quantum is served as it is and says so
(`batch_invariant: false` in `/model`).

This is a check, not a proof: it covers the row counts and the machine it ran on, which
are the ones that serve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

QUANTA = (1, 2, 4, 8, 16)
PROBE_SEED = 0
PROBES = 16  # probe rows per size: a row whose bits move shows in ~0.4 of them

Call = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
Rows = Callable[[int, torch.Generator], torch.Tensor]  # (count, generator) -> probe input


def padded(rows: int, quantum: int) -> int:
    """`rows` rounded up to a multiple of `quantum`."""
    return -(-rows // quantum) * quantum


def call_sizes(batch_sizes: tuple[int, ...], chunk: int, quantum: int) -> list[int]:
    """Every row count a module call takes: batches of `batch_sizes` rows cut into chunks of
    at most `chunk` rows, each padded to a multiple of `quantum`."""
    sizes = set()
    for rows in batch_sizes:
        sizes.add(padded(min(rows, chunk), quantum))
        if rows > chunk and rows % chunk:
            sizes.add(padded(rows % chunk, quantum))
    return sorted(sizes)


def padded_call(call: Call, quantum: int) -> Call:
    """`call` on its rows padded with zeros to a multiple of `quantum`; the padding dropped."""
    if quantum == 1:
        return call

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = x.shape[0]
        extra = padded(rows, quantum) - rows
        if extra == 0:
            return call(x)
        padding = x.new_zeros((extra, *x.shape[1:]))
        return tuple(output[:rows] for output in call(torch.cat([x, padding])))

    return run


def _spread(count: int, size: int) -> torch.Tensor:
    """`count` positions among `size` rows, evenly apart, the first and the last included."""
    return torch.linspace(0, size - 1, count).round().long()


def _probe_outputs(
    call: Call, probes: torch.Tensor, size: int, rows: Rows, generator: torch.Generator
) -> list[tuple[torch.Tensor, ...]]:
    """The outputs of each probe row computed in calls of `size` rows, the probes spread
    among random rows, in order and then in reverse (so at other positions)."""
    results = []
    per_call = min(size, len(probes))
    for flip in (False, True):
        outputs: list[tuple[torch.Tensor, ...]] = []
        for group in probes.split(per_call):
            batch = rows(size, generator)
            positions = _spread(len(group), size)
            batch[positions] = group
            if flip:
                batch, positions = batch.flip(0), size - 1 - positions
            answer = call(batch)
            outputs.append(tuple(output[positions] for output in answer))
        results.append(tuple(torch.cat(column) for column in zip(*outputs, strict=True)))
    return results


def holds(call: Call, rows: Rows, sizes: list[int]) -> bool:
    """True when every probe row gives the same bits at every size in `sizes`, among other
    rows and at other positions. Smallest sizes first: that is where kernels differ most.
    Each size computes `PROBES` rows: a difference in the last bits of an intermediate often
    rounds away in a score, so a single probe row would miss most of them."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    probes = rows(PROBES, generator)
    reference: tuple[torch.Tensor, ...] | None = None
    for size in sorted(sizes):
        for outputs in _probe_outputs(call, probes, size, rows, generator):
            if reference is None:
                reference = outputs
            elif not all(map(torch.equal, outputs, reference)):
                return False
    return True


@dataclass(frozen=True)
class Invariance:
    """The quantum each op is padded to; None for an op that holds at none of them."""

    quanta: dict[str, int | None]

    @property
    def holds(self) -> bool:
        return all(quantum is not None for quantum in self.quanta.values())

    def quantum(self, op: str) -> int:
        return self.quanta.get(op) or 1


def find_quantum(call: Call, rows: Rows, batch_sizes: tuple[int, ...], chunk: int) -> int | None:
    """The smallest quantum at which `call`, padded to it, is batch invariant for batches of
    `batch_sizes` rows cut into chunks of `chunk`; None when none is."""
    if call_sizes(batch_sizes, chunk, 1) == [1]:  # one row a call: invariant as it is
        return 1
    for quantum in QUANTA:
        sizes = call_sizes(batch_sizes, chunk, quantum)
        if holds(padded_call(call, quantum), rows, sizes):
            return quantum
    return None
