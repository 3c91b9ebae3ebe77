"""Anomaly calibration: the distribution of `score` on held-out normal images.

The validation split is scored with the model's own `score` method, the very code
the artifact exports (export then checks that the loaded artifact reproduces these
scores). Its quantiles let the service turn a score into a percentile, and the
quantile at `--threshold-quantile` is the default anomaly threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from app.artifact import Calibration
from training.errors import TrainingError
from training.model import ModelConfig

# fine steps in the body for percentiles, extra ones in the upper tail where thresholds live
LEVELS: tuple[float, ...] = (*(i / 100 for i in range(100)), 0.995, 0.999, 1.0)
SCORE_BATCH = 256


@torch.inference_mode()
def score_images(
    score: Callable[[Tensor], Tensor], images: Tensor, device: str | torch.device = "cpu"
) -> Tensor:
    """Apply `score` ((B, C, H, W) -> (B,)) to all images in batches: (N,) float64 on CPU."""
    parts = [score(batch.to(device)).double().cpu() for batch in images.split(SCORE_BATCH)]
    return torch.cat(parts)


def calibrate(scores: Tensor, model_config: ModelConfig, threshold_quantile: float) -> Calibration:
    """Quantiles of `scores` at `LEVELS`, and the threshold at `threshold_quantile`."""
    scores = scores.double()
    if scores.numel() == 0:
        raise TrainingError("cannot calibrate on an empty validation split")
    if not bool(torch.isfinite(scores).all()):
        raise TrainingError("validation scores are not finite: the training diverged")
    levels = torch.tensor(LEVELS, dtype=torch.float64)
    quantiles = torch.quantile(scores, levels)
    threshold = torch.quantile(scores, torch.tensor(threshold_quantile, dtype=torch.float64))
    return Calibration(
        score=model_config.score,
        score_samples=model_config.score_samples,
        count=scores.numel(),
        levels=list(LEVELS),
        quantiles=quantiles.tolist(),
        threshold_level=threshold_quantile,
        threshold=float(threshold),
    )
