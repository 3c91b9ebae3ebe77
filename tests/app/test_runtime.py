"""The model side: device choice, artifact loading, the batched ops, padding and warm-up."""

from __future__ import annotations

import pytest
import torch

from app.config import Settings
from app.runtime import OPS, WARMUP_PASSES, ModelRuntime, StartupError, pick_device


@pytest.fixture(scope="module")
def runtime(artifact_dir) -> ModelRuntime:
    settings = Settings(model_dir=artifact_dir, device="cpu", max_batch_size=8)
    return ModelRuntime.load(settings)


def test_auto_device_is_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


def test_missing_cuda_device_is_a_startup_error():
    with pytest.raises(StartupError, match="cuda:99"):
        pick_device("cuda:99")


def test_missing_artifact_is_a_one_line_startup_error(tmp_path):
    with pytest.raises(StartupError) as caught:
        ModelRuntime.load(Settings(model_dir=tmp_path, device="cpu"))
    assert "no model.json" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("op", "rows", "shapes"),
    [
        ("encode", 3, [(3, 4), (3, 4)]),
        ("decode", 5, [(5, 1, 28, 28)]),
        ("score", 1, [(1,)]),
        ("score_heatmap", 7, [(7,), (7, 1, 28, 28)]),
    ],
)
def test_ops_return_one_row_per_input_row(runtime, op, rows, shapes):
    batch = torch.rand(rows, *runtime.row_shape(op))
    outputs = runtime.run(op, batch)
    assert [tuple(o.shape) for o in outputs] == shapes
    assert all(o.device.type == "cpu" and o.dtype == torch.float32 for o in outputs)


def test_padding_to_a_bucket_does_not_change_results(runtime):
    images = torch.rand(5, 1, 28, 28)
    together = runtime.run("score", images)[0]  # padded to 8 rows
    alone = torch.cat([runtime.run("score", images[i : i + 1])[0] for i in range(5)])
    assert torch.allclose(together, alone, rtol=1e-5)


def test_staging_buffers_are_reused_per_bucket(runtime):
    runtime.run("decode", torch.zeros(3, 4))
    runtime.run("decode", torch.zeros(4, 4))
    assert (4, 4) in runtime._staging and (3, 4) not in runtime._staging


def test_warmup_covers_every_op_at_every_bucket(runtime):
    batches = runtime.warmup_batches()
    assert runtime.batch_sizes == (1, 2, 4, 8)
    seen = {(op, len(rows)) for op, rows in batches}
    assert seen == {(op, size) for op in OPS for size in (1, 2, 4, 8)}
    assert len(batches) == len(seen) * WARMUP_PASSES


def test_module_methods_match_the_ops(runtime):
    images = torch.rand(2, 1, 28, 28)
    mu, logvar = runtime.run("encode", images)
    expected_mu, expected_logvar = runtime.module.encode(images)
    assert torch.allclose(mu, expected_mu) and torch.allclose(logvar, expected_logvar)
    score, nll = runtime.run("score_heatmap", images)
    assert torch.allclose(score, runtime.module.score(images))
    assert torch.allclose(nll, runtime.module.pixel_nll(images))


def test_every_call_is_timed_under_its_padded_bucket(runtime):
    runtime.run("encode", torch.rand(3, 1, 28, 28))  # padded to 4
    assert runtime._cost_s[("encode", 4)] > 0
    assert ("encode", 3) not in runtime._cost_s


@pytest.fixture
def timed(artifact_dir) -> ModelRuntime:
    """A runtime with buckets 1..64 whose measured costs the test sets."""
    settings = Settings(model_dir=artifact_dir, device="cpu", max_batch_size=64)
    return ModelRuntime.load(settings)


def test_plan_takes_every_row_until_the_buckets_are_timed(timed):
    assert timed.plan("encode", 33) == 33
    timed._cost_s[("encode", 64)] = 2.0
    timed._cost_s[("encode", 32)] = 1.0
    assert timed.plan("encode", 33) == 33  # bucket 1, for the one row left, not timed yet


def test_plan_splits_at_a_bucket_when_the_parts_cost_less_than_the_padded_whole(timed):
    # cost grows with rows past 16, nearly flat below: what a CPU shows
    costs = {1: 1.0, 2: 1.1, 4: 1.2, 8: 1.5, 16: 2.0, 32: 4.0, 64: 8.0}
    timed._cost_s.update({("encode", size): cost for size, cost in costs.items()})
    assert timed.plan("encode", 33) == 32  # 4 + 1 < 8
    assert timed.plan("encode", 48) == 32  # 4 + 2 < 8
    assert timed.plan("encode", 60) == 60  # 4 + 4 is not < 8
    assert timed.plan("encode", 5) == 5  # 1.2 + 1.0 > 1.5: padding the small batch is cheaper
    assert timed.plan("encode", 32) == 32 and timed.plan("encode", 1) == 1
    assert timed.plan("decode", 33) == 33  # each op has its own costs


def test_plan_splits_a_full_bucket_when_it_runs_slower_per_row_than_two_halves(timed):
    costs = {1: 1.0, 2: 1.1, 4: 1.2, 8: 1.5, 16: 2.0, 32: 4.0, 64: 9.0}  # 64 spills cache
    timed._cost_s.update({("decode", size): cost for size, cost in costs.items()})
    assert timed.plan("decode", 64) == 32  # 4 + 4 < 9
    assert timed.plan("decode", 40) == 32  # 4 + 1.5 < 9
    assert timed.plan("decode", 32) == 32  # 2 + 2 is not < 4


def test_warmup_times_every_op_at_every_bucket(timed):
    for op, rows in timed.warmup_batches()[::WARMUP_PASSES]:
        timed.run(op, rows)
    assert set(timed._cost_s) == {(op, size) for op in OPS for size in timed.batch_sizes}


class Aliasing(torch.nn.Module):
    """A legal artifact whose methods hand back their input (or a view of it)."""

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)[:, :4]
        return flat, flat

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    @torch.jit.export
    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, 0]

    @torch.jit.export
    def pixel_nll(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_outputs_that_alias_the_staging_buffer_survive_the_next_batch(runtime):
    aliasing = ModelRuntime(
        torch.jit.script(Aliasing()), runtime.metadata, torch.device("cpu"), (1, 2, 4)
    )
    first = aliasing.run("score_heatmap", torch.full((3, 1, 28, 28), 0.25))
    aliasing.run("score_heatmap", torch.full((3, 1, 28, 28), 0.75))  # same bucket, same buffer
    assert bool((first[0] == 0.25).all()) and bool((first[1] == 0.25).all())
    mu, _ = aliasing.run("encode", torch.full((1, 1, 28, 28), 0.5))
    aliasing.run("encode", torch.zeros(1, 1, 28, 28))
    assert bool((mu == 0.5).all())
