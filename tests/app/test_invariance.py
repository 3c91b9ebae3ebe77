"""Batch invariance: the check on calls whose arithmetic is known, then the shipped model
through the runtime and through HTTP, alone and among concurrent requests."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from app.config import DEFAULT_MODEL_DIR, Settings
from app.invariance import call_sizes, find_quantum, holds, padded, padded_call
from app.runtime import OPS, ModelRuntime

BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def uniform(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand((count, 3), generator=generator)


def tiled(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Exact only when the rows fill whole tiles of 4, as a blocked kernel is."""
    return (x * 3 if x.shape[0] % 4 == 0 else x * 3 * (1 + 1e-6),)


def test_padding_rounds_up_to_the_quantum() -> None:
    assert [padded(rows, 4) for rows in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert call_sizes(BUCKETS, 64, 1) == list(BUCKETS)
    assert call_sizes(BUCKETS, 64, 4) == [4, 8, 16, 32, 64]
    assert call_sizes((1, 2, 4, 8, 16, 24), 16, 1) == [1, 2, 4, 8, 16]  # 24 = 16 + 8
    assert call_sizes((1, 2, 4, 8, 16, 20), 16, 1) == [1, 2, 4, 8, 16]  # 20 = 16 + 4


def test_a_call_exact_only_on_whole_tiles_is_found_at_quantum_four() -> None:
    assert not holds(tiled, uniform, call_sizes(BUCKETS, 64, 1))
    assert find_quantum(tiled, uniform, BUCKETS, 64) == 4
    x = uniform(3, torch.Generator().manual_seed(1))
    (out,) = padded_call(tiled, 4)(x)
    assert out.shape == x.shape and torch.equal(out, x * 3)


def test_a_call_of_one_row_at_a_time_is_not_probed() -> None:
    def refuse(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise AssertionError("probed")

    assert find_quantum(refuse, uniform, BUCKETS, 1) == 1


def test_a_call_that_mixes_rows_holds_at_no_quantum() -> None:
    def centred(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x - x.mean(0),)

    assert find_quantum(centred, uniform, BUCKETS, 64) is None


def test_a_scalar_that_moves_in_a_few_rows_only_is_caught() -> None:
    """A score rounds most intermediate differences away: only some rows show them."""

    def score(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        moved = x[:, 0] > 0.8  # about a fifth of the rows
        return (torch.where(moved & (x.shape[0] < 8), x.sum(1) + 1e-3, x.sum(1)),)

    assert find_quantum(score, uniform, BUCKETS, 64) == 8


@pytest.fixture(scope="module")
def mnist() -> ModelRuntime:
    settings = Settings(model_dir=DEFAULT_MODEL_DIR, device="cpu", torch_threads=1)
    return ModelRuntime.load(DEFAULT_MODEL_DIR, settings)


@pytest.mark.parametrize("op", OPS)
def test_the_shipped_model_gives_every_row_the_same_bits_in_any_batch(mnist, op) -> None:
    assert mnist.invariance.holds
    generator = torch.Generator().manual_seed(3)
    rows = mnist._probe_rows(op)
    probe = rows(1, generator)
    alone = mnist.run(op, probe)
    for size in (2, 3, 5, 13, 33, 64):
        batch = rows(size, generator)
        position = size // 3
        batch[position] = probe[0]
        together = mnist.run(op, batch)
        for single, output in zip(alone, together, strict=True):
            assert torch.equal(single[0], output[position]), (op, size)


def test_without_the_setting_nothing_is_padded_and_the_model_says_so() -> None:
    settings = Settings(
        model_dir=DEFAULT_MODEL_DIR, device="cpu", torch_threads=1, batch_invariant=False
    )
    runtime = ModelRuntime.load(DEFAULT_MODEL_DIR, settings)
    assert not runtime.invariance.holds
    assert all(runtime.invariance.quantum(op) == 1 for op in OPS)


@pytest.mark.anyio
async def test_the_issues_sample_and_scores_are_the_same_alone_and_among_64(serve, images):
    async with serve(model_dir=DEFAULT_MODEL_DIR, max_batch_size=64, max_wait_ms=20.0) as client:
        assert (await client.get("/model")).json()["batch_invariant"] is True
        lone = {"n": 1, "seed": 7, "format": "png"}
        alone = (await client.post("/sample", json=lone)).json()
        digits = images(4)
        scores_alone = [
            (await client.post("/anomaly", json={"images": [digit]})).json()["results"][0]
            for digit in digits
        ]
        mixed = [{"n": 1 + k % 5, "seed": 100 + k, "format": "png"} for k in range(63)]
        answers = await asyncio.gather(
            *(client.post("/sample", json=body) for body in [lone, *mixed]),
            client.post("/anomaly", json={"images": digits}),
        )
    assert all(answer.status_code == 200 for answer in answers)
    assert answers[0].json()["images"] == alone["images"]  # the same PNG bytes
    assert np.array_equal(answers[0].json()["latents"], alone["latents"])
    together = answers[-1].json()["results"]
    assert [r["score"] for r in together] == [r["score"] for r in scores_alone]
