"""Rows in and out of a forward pass: concatenation, the output contract, split, NaN."""

from __future__ import annotations

import pytest
import torch

from app.rowqueue import Piece, Request
from app.rows import BatchOutputError, check_outputs, concatenate, non_finite_pieces, split


def pieces_of(*sizes: int) -> list[Piece]:
    start, pieces = 0.0, []
    for n in sizes:
        rows = torch.arange(start, start + 2 * n).reshape(n, 2)
        pieces.append(Piece(Request("encode", rows, submitted=0.0), 0, n))
        start += 2 * n
    return pieces


def test_concatenate_joins_pieces_in_order_and_does_not_copy_a_single_piece():
    pieces = pieces_of(1, 3)
    assert concatenate(pieces).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    single = pieces_of(2)
    assert concatenate(single).data_ptr() == single[0].request.rows.data_ptr()


def test_split_gives_each_piece_its_own_rows_of_every_output():
    pieces = pieces_of(1, 2)
    batch = concatenate(pieces)
    parts = split((batch * 10, batch.sum(1)), pieces)
    assert [p[0].tolist() for p in parts] == [[[0, 10]], [[20, 30], [40, 50]]]
    assert [p[1].tolist() for p in parts] == [[1], [5, 9]]


def test_a_split_requests_last_piece_carries_all_its_rows():
    request = Request("encode", torch.arange(6.0).reshape(3, 2), submitted=0.0)
    request.parts.append((request.rows[:2] * 10,))
    last = Piece(request, 2, 3)
    (whole,) = split((request.rows[2:] * 10,), [last])[0]
    assert whole.tolist() == (request.rows * 10).tolist()


@pytest.mark.parametrize(
    "outputs",
    [[torch.zeros(2)], (), (torch.zeros(2), "x"), (torch.zeros(3),), (torch.tensor(1.0),)],
)
def test_outputs_that_break_the_contract_are_refused(outputs):
    with pytest.raises(BatchOutputError):
        check_outputs(outputs, rows=2)


def test_non_finite_rows_are_found_per_piece():
    pieces = pieces_of(2, 1, 2)
    scores = torch.zeros(5)
    images = torch.zeros(5, 3)
    assert non_finite_pieces((scores, images), pieces) is None
    images[3, 1] = float("inf")
    scores[1] = float("nan")
    assert non_finite_pieces((scores, images), pieces) == [True, False, True]


def test_finite_values_whose_sum_overflows_are_not_non_finite():
    huge = torch.full((2, 4), 3e38)
    assert non_finite_pieces((huge,), pieces_of(2)) == [False]
