"""The model side: device choice, artifact loading, the batched ops, padding and warm-up."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from app.artifact import save_artifact
from app.buckets import Buckets
from app.config import Settings
from app.latents import prior_noise, prior_sample
from app.runtime import OPS, WARMUP_PASSES, ModelRuntime, StartupError, pick_device
from tests.conftest import tiny_metadata

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "mnist"


@pytest.fixture(scope="module")
def runtime(artifact_dir) -> ModelRuntime:
    return ModelRuntime.load(artifact_dir, Settings(device="cpu", max_batch_size=8))


def test_auto_device_is_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


def test_missing_cuda_device_is_a_startup_error():
    with pytest.raises(StartupError, match="cuda:99"):
        pick_device("cuda:99")


def test_missing_artifact_is_a_one_line_startup_error(tmp_path):
    with pytest.raises(StartupError) as caught:
        ModelRuntime.load(tmp_path, Settings(device="cpu"))
    assert "no model.json" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("op", "rows", "shapes"),
    [
        ("encode", 3, [(3, 4), (3, 4)]),
        ("decode", 5, [(5, 1, 28, 28)]),
        ("score", 1, [(1,)]),
        ("score_heatmap", 7, [(7,), (7, 1, 28, 28)]),
        ("sample", 2, [(2, 4), (2, 1, 28, 28)]),
    ],
)
def test_ops_return_one_row_per_input_row(runtime, op, rows, shapes):
    batch = torch.rand(rows, *runtime.row_shape(op))
    outputs = runtime.run(op, batch)
    assert [tuple(o.shape) for o in outputs] == shapes
    assert all(o.device.type == "cpu" and o.dtype == torch.float32 for o in outputs)


def test_sample_maps_noise_through_the_artifacts_mixture(tiny_vae, tmp_path):
    model = copy.deepcopy(tiny_vae)
    model.set_sampling_prior(
        torch.tensor([0.5, 0.5]),
        torch.tensor([[-6.0] * 4, [6.0] * 4]),
        torch.eye(4).repeat(2, 1, 1),
    )
    save_artifact(model, tiny_metadata(model), tmp_path / "mixture")
    runtime = ModelRuntime.load(tmp_path / "mixture", Settings(device="cpu", max_batch_size=8))
    noise = prior_noise(6, 4, temperature=0.0, seed=3)  # temperature 0: the component means
    latents, images = runtime.run("sample", noise)
    assert {tuple(z.tolist()) for z in latents} == {(-6.0,) * 4, (6.0,) * 4}
    assert torch.allclose(images, runtime.run("decode", latents)[0])


def test_an_artifact_without_a_sampling_prior_samples_the_standard_normal():
    """The shipped MNIST artifact predates `prior_latents`: /sample keeps its N(0, I)."""
    runtime = ModelRuntime.load(SHIPPED, Settings(device="cpu", max_batch_size=8))
    assert not hasattr(runtime.module, "prior_latents")
    noise = prior_noise(3, 32, temperature=0.7, seed=5)
    latents, _ = runtime.run("sample", noise)
    assert torch.equal(latents, noise[:, 1:])
    assert torch.equal(latents, prior_sample(3, 32, temperature=0.7, seed=5))  # as before


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
    assert runtime.buckets.sizes == (1, 2, 4, 8)
    seen = {(op, len(rows)) for op, rows in batches}
    assert seen == {(op, size) for op in OPS for size in (1, 2, 4, 8)}
    assert len(batches) == len(seen) * WARMUP_PASSES


def test_module_methods_match_the_ops(runtime):
    images = torch.rand(2, 1, 28, 28)
    mu, logvar = runtime.run("encode", images)
    expected_mu, expected_logvar = runtime.module.encode(images)
    assert torch.allclose(mu, expected_mu) and torch.allclose(logvar, expected_logvar)
    score, heat = runtime.run("score_heatmap", images)
    assert torch.allclose(score, runtime.module.score(images))
    expected_heat = runtime.module.pixel_nll(images).sum(dim=1, keepdim=True)
    assert torch.allclose(heat, expected_heat)  # a model without anomaly_map


def test_every_call_is_timed_under_its_padded_bucket(runtime):
    runtime.run("encode", torch.rand(3, 1, 28, 28))  # padded to 4
    assert runtime.costs.seconds[("encode", 4)] > 0
    assert ("encode", 3) not in runtime.costs.seconds


def test_plan_asks_the_measured_costs(runtime):
    assert runtime.plan("score", 5) == 5  # nothing measured at bucket 1 yet: every row
    for op, rows in runtime.warmup_batches()[::WARMUP_PASSES]:
        runtime.run(op, rows)
    assert runtime.plan("score", 5) == runtime.costs.plan("score", 5)


def test_warmup_times_every_op_at_every_bucket(runtime):
    for op, rows in runtime.warmup_batches()[::WARMUP_PASSES]:
        runtime.run(op, rows)
    assert set(runtime.costs.seconds) == {(op, n) for op in OPS for n in runtime.buckets.sizes}


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
        torch.jit.script(Aliasing()), runtime.metadata, torch.device("cpu"), Buckets((1, 2, 4))
    )
    first = aliasing.run("score_heatmap", torch.full((3, 1, 28, 28), 0.25))
    aliasing.run("score_heatmap", torch.full((3, 1, 28, 28), 0.75))  # same bucket, same buffer
    assert bool((first[0] == 0.25).all()) and bool((first[1] == 0.25).all())
    mu, _ = aliasing.run("encode", torch.full((1, 1, 28, 28), 0.5))
    aliasing.run("encode", torch.zeros(1, 1, 28, 28))
    assert bool((mu == 0.5).all())
