"""Buckets and the plan their measured costs make: plain arithmetic, no model."""

from __future__ import annotations

import pytest

from app.buckets import BucketCosts, Buckets


def test_default_buckets_are_powers_of_two_and_the_maximum():
    assert Buckets.up_to(48).sizes == (1, 2, 4, 8, 16, 32, 48)
    assert Buckets.up_to(1).sizes == (1,)
    assert Buckets.up_to(64, (1, 8, 32)).sizes == (1, 8, 32, 64)


@pytest.mark.parametrize(("rows", "bucket"), [(1, 1), (3, 4), (8, 8), (33, 48), (48, 48)])
def test_rows_are_padded_up_to_the_next_bucket(rows, bucket):
    assert Buckets.up_to(48).of(rows) == bucket


def test_rows_past_the_largest_bucket_are_their_own_bucket():
    assert Buckets((1, 2)).of(5) == 5


def costs_of(op: str, table: dict[int, float]) -> BucketCosts:
    costs = BucketCosts(Buckets.up_to(64))
    for size, seconds in table.items():
        costs.record(op, size, seconds)
    return costs


def test_the_fastest_call_is_kept():
    costs = costs_of("encode", {4: 2.0})
    costs.record("encode", 4, 1.0)
    costs.record("encode", 4, 3.0)
    assert costs.seconds[("encode", 4)] == 1.0


def test_plan_takes_every_row_until_the_buckets_are_timed():
    costs = BucketCosts(Buckets.up_to(64))
    assert costs.plan("encode", 33) == 33
    costs.record("encode", 64, 2.0)
    costs.record("encode", 32, 1.0)
    assert costs.plan("encode", 33) == 33  # bucket 1, for the one row left, not timed yet


def test_plan_splits_at_a_bucket_when_the_parts_cost_less_than_the_padded_whole():
    # cost grows with rows past 16, nearly flat below: what a CPU shows
    costs = costs_of("encode", {1: 1.0, 2: 1.1, 4: 1.2, 8: 1.5, 16: 2.0, 32: 4.0, 64: 8.0})
    assert costs.plan("encode", 33) == 32  # 4 + 1 < 8
    assert costs.plan("encode", 48) == 32  # 4 + 2 < 8
    assert costs.plan("encode", 60) == 60  # 4 + 4 is not < 8
    assert costs.plan("encode", 5) == 5  # 1.2 + 1.0 > 1.5: padding the small batch is cheaper
    assert costs.plan("encode", 32) == 32 and costs.plan("encode", 1) == 1
    assert costs.plan("decode", 33) == 33  # each op has its own costs


def test_plan_splits_a_full_bucket_when_it_runs_slower_per_row_than_two_halves():
    costs = costs_of("decode", {1: 1.0, 2: 1.1, 4: 1.2, 8: 1.5, 16: 2.0, 32: 4.0, 64: 9.0})
    assert costs.plan("decode", 64) == 32  # 4 + 4 < 9
    assert costs.plan("decode", 40) == 32  # 4 + 1.5 < 9
    assert costs.plan("decode", 32) == 32  # 2 + 2 is not < 4
