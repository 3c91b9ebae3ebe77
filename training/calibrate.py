"""Anomaly calibration: a split-conformal threshold from scores of held-out normal images.

The calibration split is scored with the model's own `score` method, the very code the
artifact exports (export then checks that the loaded artifact reproduces these scores).
It is a split of its own: neither training nor checkpoint selection sees it, so its
scores are exchangeable with those of new normal images, which is all the guarantee
below needs.

Split conformal (Vovk et al. 2005; Angelopoulos & Bates 2021, "A gentle introduction to
conformal prediction"): with n calibration scores and a requested false-alarm rate a,
the threshold is the k-th smallest score, k = ceil((n + 1)(1 - a)). A new normal image
then scores above it with probability at most a, and at least a - 1/(n + 1). Which
calibration images were drawn still matters: over calibration sets, the rate on new
normal data is Beta(n + 1 - k, k)-distributed (for continuous scores), so the
calibration stores its mean and a 90% interval. At least (1 - a) / a images are needed
for k <= n at all; about 10 / a (ten expected calibration scores above the threshold)
keep the interval within a factor of two of a.

The quantiles at `LEVELS` let the service turn a score into a percentile.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from app.artifact import Calibration
from training.errors import DataError, TrainingError
from training.model import ModelConfig

# fine steps in the body for percentiles, extra ones in the upper tail where thresholds live
LEVELS: tuple[float, ...] = (*(i / 100 for i in range(100)), 0.995, 0.999, 1.0)
SCORE_BATCH = 256
SCORE_PIXELS = 1 << 22  # per batch: 256 MNIST digits, 45 images of 304x304
INTERVAL_LEVEL = 0.9
EXPECTED_EXCEEDANCES = 10  # calibration scores above the threshold, on average, for "enough"


def conformal_rank(count: int, false_alarm_rate: float) -> int:
    """k: the threshold is the k-th smallest of `count` calibration scores (k > count:
    no finite threshold keeps the rate)."""
    return math.ceil((count + 1) * (1.0 - false_alarm_rate) - 1e-9)  # 1e-9: float noise in a


def needed_count(false_alarm_rate: float) -> int:
    """The fewest calibration images with a finite threshold at `false_alarm_rate`."""
    count = max(1, math.floor((1.0 - false_alarm_rate) / false_alarm_rate) - 1)
    while conformal_rank(count, false_alarm_rate) > count:
        count += 1
    return count


def recommended_count(false_alarm_rate: float) -> int:
    """Enough calibration images for a 90% interval within about a factor of two."""
    return max(needed_count(false_alarm_rate), math.ceil(EXPECTED_EXCEEDANCES / false_alarm_rate))


def false_alarm_distribution(count: int, false_alarm_rate: float) -> tuple[float, float, float]:
    """The rate on new normal data over calibration sets of `count`: mean, and the
    central `INTERVAL_LEVEL` interval (low, high)."""
    from scipy.stats import beta  # here: scipy.stats takes a second to import

    k = conformal_rank(count, false_alarm_rate)
    a, b = count + 1 - k, k  # Beta(a, b)
    tail = (1.0 - INTERVAL_LEVEL) / 2
    low, high = beta.ppf([tail, 1.0 - tail], a, b)
    return a / (count + 1), float(low), float(high)


def calibration_advice(count: int, false_alarm_rate: float) -> str | None:
    """Raise `DataError` when `count` calibration images cannot keep `false_alarm_rate`;
    a line of advice when they keep it only loosely; None when they are enough."""
    needed = needed_count(false_alarm_rate)
    if count < needed:
        raise DataError(
            f"the calibration split has {count} image(s); a false-alarm rate of "
            f"{false_alarm_rate:g} needs at least {needed} (about "
            f"{recommended_count(false_alarm_rate)} to pin it down): give more images, a "
            "larger --calibration-fraction, or a higher --false-alarm-rate"
        )
    if count >= recommended_count(false_alarm_rate):
        return None
    mean, low, high = false_alarm_distribution(count, false_alarm_rate)
    return (
        f"calibration: {count} images; the false-alarm rate on new normal data will be "
        f"{_percent(mean)} on average, within [{_percent(low)}, {_percent(high)}] for 90% "
        f"of such calibration sets; about {recommended_count(false_alarm_rate)} would "
        "narrow that to within a factor of two"
    )


@torch.inference_mode()
def score_images(
    score: Callable[[Tensor], Tensor], images: Tensor, device: str | torch.device = "cpu"
) -> Tensor:
    """Apply `score` ((B, C, H, W) -> (B,)) to all images in batches: (N,) float64 on CPU.
    Batches hold at most `SCORE_PIXELS` pixels: 120 images of 304x304 at once held 8 GB
    of an inspection model's activations."""
    rows = max(1, min(SCORE_BATCH, SCORE_PIXELS // (images.shape[-2] * images.shape[-1])))
    parts = [score(batch.to(device)).double().cpu() for batch in images.split(rows)]
    return torch.cat(parts)


def conformal_threshold(scores: Tensor, false_alarm_rate: float) -> float:
    """The k-th smallest of `scores` (see the module docstring)."""
    k = conformal_rank(scores.numel(), false_alarm_rate)
    if k > scores.numel():
        raise DataError(
            f"{scores.numel()} calibration scores cannot keep a false-alarm rate of "
            f"{false_alarm_rate:g}; it needs at least {needed_count(false_alarm_rate)}"
        )
    return float(scores.double().sort().values[k - 1])


def calibrate(scores: Tensor, model_config: ModelConfig, false_alarm_rate: float) -> Calibration:
    """The split-conformal threshold of `scores` at `false_alarm_rate`, what to expect of
    it on new data, and the quantiles of `scores` at `LEVELS`."""
    scores = scores.double()
    if scores.numel() == 0:
        raise TrainingError("cannot calibrate on an empty calibration split")
    if not bool(torch.isfinite(scores).all()):
        raise TrainingError("calibration scores are not finite: the training diverged")
    threshold = conformal_threshold(scores, false_alarm_rate)
    expected, low, high = false_alarm_distribution(scores.numel(), false_alarm_rate)
    quantiles = torch.quantile(scores, torch.tensor(LEVELS, dtype=torch.float64))
    return Calibration(
        score=model_config.score,
        score_samples=model_config.score_samples,
        count=scores.numel(),
        levels=list(LEVELS),
        quantiles=quantiles.tolist(),
        threshold_level=1.0 - false_alarm_rate,
        threshold=threshold,
        method="split-conformal",
        false_alarm_rate=false_alarm_rate,
        expected_false_alarm_rate=expected,
        false_alarm_interval=(low, high),
        false_alarm_interval_level=INTERVAL_LEVEL,
    )


def _percent(rate: float) -> str:
    return f"{100 * rate:.2g}%"
