"""Calibration: the split-conformal threshold, what it promises, and the score quantiles."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from training.calibrate import (
    LEVELS,
    calibrate,
    calibration_advice,
    conformal_rank,
    false_alarm_distribution,
    needed_count,
    recommended_count,
    score_images,
)
from training.errors import DataError, TrainingError
from training.model import ModelConfig


def test_the_threshold_is_the_conformal_order_statistic() -> None:
    scores = torch.arange(1000, dtype=torch.float64).flip(0)  # 0..999, in any order
    calibration = calibrate(scores, ModelConfig(score="nelbo", score_samples=3), 0.01)
    assert conformal_rank(1000, 0.01) == 991  # ceil(1001 * 0.99)
    assert calibration.threshold == 990.0  # the 991st smallest
    assert calibration.method == "split-conformal" and calibration.false_alarm_rate == 0.01
    assert calibration.threshold_level == pytest.approx(0.99)
    assert calibration.expected_false_alarm_rate == pytest.approx(10 / 1001)
    assert calibration.count == 1000 and calibration.levels == list(LEVELS)
    assert calibration.quantiles == pytest.approx([999 * level for level in LEVELS])
    assert (calibration.score, calibration.score_samples) == ("nelbo", 3)


@pytest.mark.parametrize(("count", "rate"), [(99, 0.01), (200, 0.01), (150, 0.05), (40, 0.1)])
def test_the_false_alarm_rate_on_new_data_is_as_stored(count: int, rate: float) -> None:
    """Coverage on synthetic scores: draw many calibration sets of normal scores; each
    threshold's false-alarm rate on new normal data is exact (1 - Phi(threshold)). Over
    the sets, the rate has the stored mean, never exceeds the request on average, and
    falls inside the stored 90% interval for 90% of them."""
    generator = torch.Generator().manual_seed(count)
    trials = 4000
    rates = []
    for _ in range(trials):
        scores = torch.randn(count, generator=generator, dtype=torch.float64)
        threshold = calibrate(scores, ModelConfig(), rate).threshold
        rates.append(float(norm.sf(threshold)))
    measured = torch.tensor(rates, dtype=torch.float64)
    expected, low, high = false_alarm_distribution(count, rate)
    spread = float(measured.std()) / math.sqrt(trials)
    assert abs(float(measured.mean()) - expected) < 4 * spread
    assert float(measured.mean()) <= rate + 4 * spread
    assert expected >= rate - 1 / (count + 1)
    inside = float(((measured >= low) & (measured <= high)).double().mean())
    assert inside == pytest.approx(0.9, abs=0.02)


def test_the_old_validation_quantile_flags_twice_the_request() -> None:
    """Why the method changed: the interpolated 99% quantile of 100 scores is exceeded by
    about 2% of new normal scores, the conformal threshold by at most 1%."""
    generator = torch.Generator().manual_seed(0)
    quantile, conformal = [], []
    for _ in range(4000):
        scores = torch.randn(100, generator=generator, dtype=torch.float64)
        quantile.append(float(norm.sf(float(torch.quantile(scores, 0.99)))))
        conformal.append(float(norm.sf(calibrate(scores, ModelConfig(), 0.01).threshold)))
    assert sum(quantile) / len(quantile) > 0.018
    assert sum(conformal) / len(conformal) < 0.0105


def test_how_many_calibration_images_a_rate_needs() -> None:
    assert [needed_count(rate) for rate in (0.01, 0.05, 0.1, 0.5)] == [99, 19, 9, 1]
    for rate in (0.01, 0.05, 0.1, 0.003):
        needed = needed_count(rate)
        assert conformal_rank(needed, rate) <= needed  # a finite threshold
        assert conformal_rank(needed - 1, rate) > needed - 1  # one fewer: none
    assert recommended_count(0.01) == 1000
    _, low, high = false_alarm_distribution(recommended_count(0.01), 0.01)
    assert low > 0.005 and high < 0.02  # within a factor of two, as documented


def test_too_few_calibration_images_are_refused_and_few_are_warned_about() -> None:
    with pytest.raises(DataError, match=r"has 98 image\(s\).*needs at least 99") as raised:
        calibration_advice(98, 0.01)
    assert "\n" not in str(raised.value)
    with pytest.raises(DataError, match="needs at least 99"):
        calibrate(torch.randn(98), ModelConfig(), 0.01)
    advice = calibration_advice(500, 0.01)
    assert advice is not None and "about 1000 would narrow" in advice
    assert calibration_advice(1000, 0.01) is None


def test_percentiles_read_back_from_the_calibration() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = 100 + 10 * torch.randn(5000, generator=generator)
    calibration = calibrate(scores, ModelConfig(), 0.05)
    assert calibration.percentile(calibration.threshold) == pytest.approx(95.0, abs=0.5)
    assert calibration.percentile(float(scores.median())) == pytest.approx(50.0, abs=0.5)
    assert calibration.percentile(float(scores.min()) - 1) == 0.0
    assert calibration.percentile(float(scores.max()) + 1) == 100.0
    assert calibration.quantiles == sorted(calibration.quantiles)
    assert (scores > calibration.threshold).double().mean() == pytest.approx(0.05, abs=0.002)


def test_diverged_scores_cannot_be_calibrated() -> None:
    with pytest.raises(TrainingError, match="not finite"):
        calibrate(torch.tensor([1.0, float("nan")]), ModelConfig(), 0.5)


def test_score_images_batches_without_changing_results() -> None:
    images = torch.rand(600, 1, 28, 28)
    scores = score_images(lambda x: x.flatten(1).sum(1), images)
    assert scores.shape == (600,) and scores.dtype == torch.float64
    assert torch.allclose(scores, images.flatten(1).sum(1).double(), atol=1e-4)
