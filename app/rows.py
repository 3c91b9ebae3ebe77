"""Rows in and out of one forward pass: plain functions the batcher's worker thread calls.

`concatenate` joins the pieces of a batch, `check_outputs` holds `run` to its contract,
`split` hands each piece its own output rows (a split request's last piece gets the
whole request's), and `non_finite_pieces` finds the pieces whose outputs hold NaN or inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from app.rowqueue import Piece

Outputs = tuple[torch.Tensor, ...]


class BatchOutputError(RuntimeError):
    """`run` broke its contract: a tuple of tensors, one output row per input row."""


def concatenate(pieces: Sequence[Piece]) -> torch.Tensor:
    """(B, ...): every piece's rows in order; no copy for a batch of one piece."""
    chunks = [piece.request.rows[piece.start : piece.stop] for piece in pieces]
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def check_outputs(outputs: object, rows: int) -> None:
    if not (isinstance(outputs, tuple) and outputs and all(torch.is_tensor(o) for o in outputs)):
        raise BatchOutputError(f"run() must return a non-empty tuple of tensors: {outputs!r:.60}")
    leading = [output.shape[0] if output.dim() else None for output in outputs]
    if any(n != rows for n in leading):
        raise BatchOutputError(
            f"a batched call must return one output row per input row: "
            f"{rows} rows in, leading dims {leading} out"
        )


def split(outputs: Outputs, pieces: Sequence[Piece]) -> list[Outputs]:
    """Per piece, its rows of every output; a request's last piece carries all its rows."""
    if len(pieces) == 1:
        per_piece = [outputs]
    else:
        sizes = [piece.size for piece in pieces]
        per_piece = list(zip(*(torch.split(out, sizes) for out in outputs), strict=True))
    for i, piece in enumerate(pieces):
        if piece.request.parts and piece.last:
            parts = zip(*piece.request.parts, per_piece[i], strict=True)
            per_piece[i] = tuple(torch.cat(part) for part in parts)
    return per_piece


def non_finite_pieces(outputs: Outputs, pieces: Sequence[Piece]) -> list[bool] | None:
    """Per piece, whether any of its output rows holds NaN or inf; None when none does."""
    if all_finite(outputs):
        return None
    finite = finite_rows(outputs)  # (B,)
    sizes = [piece.size for piece in pieces]
    return [not bool(ok.all()) for ok in torch.split(finite, sizes)]


def all_finite(outputs: Outputs) -> bool:
    """True when every value is finite: one sum per output, ~20x cheaper than the per-row
    check on a batch of images. NaN or inf makes the sum non-finite; finite values whose
    sum overflows only send the batch to the exact check."""
    return all(math.isfinite(float(output.sum())) for output in outputs)


def finite_rows(outputs: Outputs) -> torch.Tensor:
    """(B,) bool: True where every output of that row is finite."""
    finite = None
    for output in outputs:
        ok = torch.isfinite(output)
        ok = ok.flatten(1).all(dim=1) if ok.dim() > 1 else ok
        finite = ok if finite is None else finite & ok.to(finite.device)
    assert finite is not None
    return finite
