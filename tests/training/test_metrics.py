"""Evaluation: chunked by memory, planned to fit a budget, the same figures however it runs."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch

from training.metrics import (
    EvalPlan,
    bits_per_dim,
    chunk_rows,
    format_seconds,
    iwae_nll,
    likelihood_sums,
    negative_elbo,
    plan_evaluation,
)
from training.model import VAE

# Peak RSS growth while evaluating two 128x128 RGB images with 16 + 256 draws each. Chunked
# by rows alone (2,048 a call, whatever the image size) the same work took 674 MB.
EVAL_MEMORY_BOUND_MB = 200
MEASURE_EVAL_MEMORY = """
import resource, torch
from training.metrics import EvalPlan, likelihood_sums
from training.model import VAE, ModelConfig
torch.set_num_threads(1)
config = ModelConfig(
    channels=3, image_size=128, hidden=(2, 2, 2), dense=16, latent_dim=4, likelihood="gaussian"
)
model = VAE(config).eval()
x = torch.rand(2, 3, 128, 128)
likelihood_sums(model, x[:1], EvalPlan(1, 1))  # allocator and kernels warmed up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sums = likelihood_sums(model, x, EvalPlan(16, 256))
assert sums.images == 2
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_evaluation_memory_stays_bounded_for_a_128px_rgb_model() -> None:
    assert chunk_rows((3, 128, 128)) == 32 and chunk_rows((1, 28, 28)) == 2048
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_EVAL_MEMORY], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < EVAL_MEMORY_BOUND_MB


def test_the_sums_are_the_two_metrics_computed_one_after_the_other(tiny_config, synthetic):
    torch.manual_seed(0)
    model = VAE(tiny_config.model_config(channels=1)).eval()
    x = synthetic.images[:40]
    sums = likelihood_sums(model, x, EvalPlan(elbo_samples=4, iwae_samples=8), seed=3)
    assert sums.images == 40
    assert sums.nelbo == pytest.approx(float(negative_elbo(model, x, 4, seed=3).sum()), rel=1e-5)
    assert sums.iwae == pytest.approx(float(iwae_nll(model, x, 8, seed=3).sum()), rel=1e-5)


def test_a_plan_that_would_not_fit_takes_fewer_draws_and_says_so() -> None:
    plan, note = plan_evaluation(1000, 256, row_seconds=1e-3, seconds_left=600.0)
    assert (plan.elbo_samples, plan.iwae_samples, note) == (16, 256, None)  # 272 s: fits
    plan, note = plan_evaluation(1000, 256, row_seconds=1e-3, seconds_left=60.0)
    assert plan.rows(1000) * 1e-3 <= 60.0 and plan.iwae_samples == 32 and plan.elbo_samples == 16
    assert note is not None and "k=256" in note and "k=32" in note and "4m32s" in note
    plan, _ = plan_evaluation(1000, 256, row_seconds=1e-3, seconds_left=0.5)
    assert (plan.elbo_samples, plan.iwae_samples) == (1, 1)  # the least there is
    assert plan.deadline == pytest.approx(time.monotonic() + 0.5, abs=0.1)


def test_the_evaluation_stops_at_its_deadline(tiny_config, synthetic) -> None:
    model = VAE(tiny_config.model_config(channels=1)).eval()
    seen: list[int] = []
    sums = likelihood_sums(model, synthetic.images, EvalPlan(64, 1, deadline=0.0), 0, seen.append)
    assert sums.images == seen[0] == 2048 // 64 < len(synthetic)  # one block, then it stops


def test_durations_read_like_durations() -> None:
    seconds = (0.44, 12.4, 59, 65, 3725)
    assert [format_seconds(s) for s in seconds] == ["0.4s", "12s", "59s", "1m05s", "1h02m"]


def test_bits_per_dim_counts_a_density_over_8_bit_values() -> None:
    assert bits_per_dim(0.0, 784) == pytest.approx(7.994, abs=1e-3)  # uniform on [0, 1]
    assert bits_per_dim(-784 * math.log(2), 784) == pytest.approx(6.994, abs=1e-3)
