"""--max-minutes: the schedules follow the clock, and a whole real run keeps to its budget."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from app.artifact import load_artifact
from tests.conftest import TINY_SPATIAL
from training.budget import EXPORT_RESERVE_S, MAX_SYNC_STEPS, SYNC_SECONDS, Budget, Pace, kl_warmup
from training.config import TrainConfig
from training.density import PatchDensity, fit_patch_density
from training.metrics import ELBO_SAMPLES
from training.model import build_model
from training.pipeline import map_image_seconds
from training.place import PlaceDensity, fit_place_density
from training.presets import preset_values
from training.selection import SELECTION_PIXELS
from training.train import (
    CHOICE_COST,
    MAP_ROWS,
    _head_seconds,
    after_evaluation_rows,
    after_evaluation_seconds,
    evaluation_seconds,
)


class Clock:
    """time.monotonic() for the budget module, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("training.budget.time.monotonic", fake)
    return fake


def test_without_a_budget_the_schedules_run_by_steps(clock: Clock) -> None:
    pace = Pace(total_steps=200, warmup_steps=40, budget=Budget(None))
    clock.now += 1e6
    assert not pace.sync(100) and not pace.due(1)
    assert pace.fraction(50) == 0.25 and pace.fraction(400) == 1.0
    assert [pace.kl_weight(s) for s in (0, 19, 39, 100)] == [
        kl_warmup(s, 40) for s in (0, 19, 39, 100)
    ]


def test_the_training_deadline_leaves_the_evaluation_and_export_their_time(clock) -> None:
    budget = Budget(minutes=10.0)
    assert budget.training_deadline(None) == clock.now + 600 - 150 - EXPORT_RESERVE_S  # a quarter
    assert budget.training_deadline(30.0) == clock.now + 600 - 30 - EXPORT_RESERVE_S
    assert Budget(10.0, startup=2.0).export_reserve() == EXPORT_RESERVE_S + 3.0  # a slow box
    assert Budget(minutes=0.1).export_reserve() == 3.0  # never beyond half the budget


def test_the_work_after_the_evaluation_is_held_back_whole_but_within_half(clock) -> None:
    """Calibration and a spatial model's choice of its map cannot shrink as the
    evaluation does: a 1,200-image preset run once overran 14 minutes by 4 for them."""
    budget = Budget(minutes=10.0)
    assert budget.training_deadline(1000.0, 60.0) == clock.now + 600 - 150 - 60 - EXPORT_RESERVE_S
    assert budget.training_deadline(None, 1e6) == clock.now + 600 - 300 - EXPORT_RESERVE_S


def test_a_spatial_model_reserves_its_maps_and_a_vae_its_sampling_prior() -> None:
    preset = TrainConfig(**preset_values("inspection"))  # val 0.2, calibration 0.1
    rows = after_evaluation_rows(preset, 240)
    assert rows == MAP_ROWS * (2 * 240 + 2 * 120)
    chosen = replace(preset, map_sigma=2.0)  # the mix of the map is still chosen
    assert after_evaluation_rows(chosen, 240) == rows
    assert after_evaluation_rows(TrainConfig(prior_components=0), 240) == 0.0
    assert after_evaluation_rows(TrainConfig(), 240) > 2 * 240


def test_a_spatial_model_also_reserves_its_densities_maps_per_image() -> None:
    """On 1,200 loose 300 px parts the patch mixture and the centre search after training
    overran a 14-minute budget by 84 s when only the decoder's rows were counted."""
    preset = TrainConfig(**preset_values("inspection"))
    rows_only = after_evaluation_seconds(preset, 240, 0.01)
    assert rows_only == after_evaluation_rows(preset, 240) * 0.01
    with_maps = after_evaluation_seconds(preset, 240, 0.01, map_image_seconds=0.1)
    assert with_maps == pytest.approx(rows_only + (CHOICE_COST * 2 * 240 + 2 * 120) * 0.1)
    # images so large that the choice is made on the first 48 only
    large = after_evaluation_seconds(preset, 240, 0.01, 0.1, pixels=SELECTION_PIXELS // 48)
    assert large == pytest.approx(rows_only + (CHOICE_COST * 2 * 48 + 2 * 120) * 0.1)
    vae = TrainConfig()  # no densities: the per-image maps do not apply
    assert after_evaluation_seconds(vae, 240, 0.01, 0.1) == after_evaluation_seconds(vae, 240, 0.01)


def test_a_spatial_models_evaluation_reserves_no_score_draws() -> None:
    preset = TrainConfig(**preset_values("inspection"))
    vae = replace(preset, architecture="mlp")
    per_image = ELBO_SAMPLES + preset.iwae_samples
    assert evaluation_seconds(preset, 10, 1.0) == 10 * per_image
    assert evaluation_seconds(vae, 10, 1.0) == 10 * (per_image + 2 * preset.score_samples)


def test_the_map_head_is_timed_on_a_real_spatial_model_and_nothing_else_is() -> None:
    torch.manual_seed(0)
    images = torch.rand(6, 1, 48, 64)
    spatial = build_model(TINY_SPATIAL)
    assert 0.0 < _head_seconds(spatial, images) < 10.0
    assert not spatial.training  # timed as it will run after training
    vae = build_model(replace(TINY_SPATIAL, architecture="mlp", hidden=(16,), latent_dim=4))
    assert _head_seconds(vae, images) == 0.0


def test_the_densities_maps_are_timed_on_real_fitted_densities() -> None:
    images = torch.rand(24, 1, 32, 32)
    density = fit_patch_density(PatchDensity(1), images, seed=0)
    place = fit_place_density(PlaceDensity(1), images, seed=0, log=lambda _: None)
    seconds = map_image_seconds(density, place, images)
    assert 0.0 < seconds < 10.0
    assert map_image_seconds(density, place, images[:0]) == 0.0


def test_under_a_budget_the_schedules_follow_the_clock(clock: Clock) -> None:
    budget = Budget(minutes=1.0)
    pace = Pace(total_steps=10_000, warmup_steps=1_000, budget=budget)
    pace.set_eval_estimate(11.0)  # training may take 60 - 11 - 4 = 45 s
    assert pace.due(1)  # the first step's time sets how often the clock is read
    clock.now += 9.0
    assert not pace.sync(50)
    assert pace.fraction(50) == pytest.approx(0.2)  # a fifth of the time, 0.5% of the steps
    assert not pace.due(50 + round(50 * SYNC_SECONDS / 9.0) - 1)  # ~10 s of 0.18 s steps
    assert pace.due(50 + round(50 * SYNC_SECONDS / 9.0))
    clock.now += 9.0
    assert not pace.sync(100)
    assert pace.fraction(100) == pytest.approx(0.4)
    assert pace.fraction(125) == pytest.approx(0.5)  # between syncs: extrapolated by steps
    assert pace.kl_weight(100) == 1.0  # the warm-up is a tenth of the run, the run is at 0.4
    clock.now += 27.0
    assert pace.sync(150)  # 45 s: time to stop, and it stays decided
    assert pace.sync(151) and pace.fraction(150) == 1.0


def test_fast_steps_sync_at_most_every_thousand_steps(clock: Clock) -> None:
    pace = Pace(total_steps=100_000, warmup_steps=0, budget=Budget(minutes=1.0))
    clock.now += 0.001
    pace.sync(1)
    assert not pace.due(MAX_SYNC_STEPS) and pace.due(1 + MAX_SYNC_STEPS)


def test_a_resumed_run_carries_on_from_its_fraction(clock: Clock) -> None:
    pace = Pace(total_steps=1_000, warmup_steps=0, budget=Budget(None), start_fraction=0.6)
    assert pace.fraction(100) == 0.6 and pace.fraction(700) == 0.7
    timed = Pace(total_steps=1_000, warmup_steps=0, budget=Budget(1.0), start_fraction=0.6)
    timed.set_eval_estimate(11.0)
    clock.now += 22.5
    timed.sync(150)
    assert timed.fraction(150) == pytest.approx(0.6 + 0.4 * 0.5)


def test_a_whole_run_ends_within_its_budget(tmp_path: Path, synthetic, tiny_flags) -> None:
    """Many epochs and an IWAE far too large: training stops early, k is scaled down, and
    the command (evaluation and export included) ends within --max-minutes."""
    pixels = (synthetic.images[:, 0] * 255).round().to(torch.uint8).numpy()
    np.savez(tmp_path / "bars.npz", images=pixels)
    minutes = 0.4
    command = [
        sys.executable, "-m", "training", "--data", "bars.npz", *tiny_flags, "--threads", "1",
        "--epochs", "100000", "--iwae-samples", "1000000", "--max-minutes", str(minutes),
        "--checkpoint-dir", "runs", "--out", "model",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert seconds < 60 * minutes + 1.5, done.stdout[-1500:]  # + interpreter start and exit
    assert "training stops after epoch" in done.stdout
    assert "k=1000000 IWAE draws would take about" in done.stdout
    _, meta = load_artifact(tmp_path / "model")
    assert meta.metrics["epochs_trained"] >= 1
    assert 1 <= meta.metrics["iwae_samples"] < 1_000_000
