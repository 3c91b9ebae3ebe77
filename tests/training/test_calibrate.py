"""Calibration: quantiles of the validation scores and the anomaly threshold."""

from __future__ import annotations

import pytest
import torch

from training.calibrate import LEVELS, calibrate, score_images
from training.errors import TrainingError
from training.model import ModelConfig


def test_quantiles_and_threshold_of_a_known_distribution() -> None:
    scores = torch.arange(1001, dtype=torch.float64).flip(0)  # 0..1000, in any order
    calibration = calibrate(scores, ModelConfig(score="nelbo", score_samples=3), 0.99)
    assert calibration.count == 1001
    assert calibration.levels == list(LEVELS)
    assert calibration.levels[0] == 0.0 and calibration.levels[-1] == 1.0
    assert calibration.quantiles == pytest.approx([1000 * level for level in LEVELS])
    assert calibration.threshold == pytest.approx(990.0)
    assert (calibration.score, calibration.score_samples) == ("nelbo", 3)


def test_percentiles_read_back_from_the_calibration() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = 100 + 10 * torch.randn(5000, generator=generator)
    calibration = calibrate(scores, ModelConfig(), 0.95)
    assert calibration.percentile(calibration.threshold) == pytest.approx(95.0, abs=0.5)
    assert calibration.percentile(float(scores.median())) == pytest.approx(50.0, abs=0.5)
    assert calibration.percentile(float(scores.min()) - 1) == 0.0
    assert calibration.percentile(float(scores.max()) + 1) == 100.0
    assert calibration.quantiles == sorted(calibration.quantiles)
    assert (scores > calibration.threshold).double().mean() == pytest.approx(0.05, abs=0.002)


def test_diverged_scores_cannot_be_calibrated() -> None:
    with pytest.raises(TrainingError, match="not finite"):
        calibrate(torch.tensor([1.0, float("nan")]), ModelConfig(), 0.99)


def test_score_images_batches_without_changing_results() -> None:
    images = torch.rand(600, 1, 28, 28)
    scores = score_images(lambda x: x.flatten(1).sum(1), images)
    assert scores.shape == (600,) and scores.dtype == torch.float64
    assert torch.allclose(scores, images.flatten(1).sum(1).double(), atol=1e-4)
