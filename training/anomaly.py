"""The one-class anomaly protocol (as in Deep SVDD, Ruff et al. 2018) on labelled digits.

For each digit k, its images are split four ways: training, validation (the best
checkpoint), calibration (the threshold) and a test split that nothing else sees.
Train on the training split of k only; score the test images of k ("normal") and every
image of the other digits ("anomalous", never trained on); report the AUROC of
anomalous against normal. The shipped score kind comes from the exported artifact's own
`score`; every other kind is the same weights' `score` with the kind switched, which is
what shipping that kind would give.

The threshold is judged the way a user meets it: the share of k's test images that the
artifact's split-conformal threshold flags, against the rate requested (and the rate
its calibration expects), and likewise at `EXTRA_RATES`, thresholds set on the same
calibration scores (those the calibration split is large enough for).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from app.artifact import load_artifact
from training.calibrate import (
    conformal_threshold,
    false_alarm_distribution,
    needed_count,
    score_images,
)
from training.config import TrainConfig
from training.dataset import ImageSet, fingerprint, hold_out, select_classes
from training.errors import DataError
from training.model import VAE, ScoreKind
from training.pipeline import FitResult, PreparedData, fit_and_export
from training.roc import auroc
from training.train import Log, resolve_device

EXTRA_RATES = (0.05, 0.1)


@dataclass(frozen=True)
class FalseAlarms:
    """A threshold at a requested rate, judged on normal images that nothing else saw."""

    requested: float
    expected: float  # the calibration's own expectation, over calibration sets
    interval: tuple[float, float]  # where 90% of calibration sets put the rate
    calibration_count: int
    flagged: int
    held_out: int

    @property
    def measured(self) -> float:
        return self.flagged / self.held_out


@dataclass(frozen=True)
class DigitResult:
    auroc: dict[str, float]  # score kind -> AUROC in [0, 1]
    false_alarms: tuple[FalseAlarms, ...]  # the requested rate first, then EXTRA_RATES


@dataclass(frozen=True)
class AnomalyReport:
    kinds: tuple[ScoreKind, ...]
    auroc: dict[int, dict[str, float]]  # digit -> score kind -> AUROC in [0, 1]
    false_alarms: dict[int, tuple[FalseAlarms, ...]] = field(default_factory=dict)

    def mean(self) -> dict[str, float]:
        return {k: sum(row[k] for row in self.auroc.values()) / len(self.auroc) for k in self.kinds}

    def worst(self) -> dict[str, float]:
        return {k: min(row[k] for row in self.auroc.values()) for k in self.kinds}

    def mean_false_alarms(self) -> list[tuple[float, float]]:
        """Per rate: (requested, measured rate averaged over digits)."""
        rows = list(self.false_alarms.values())
        return [
            (rows[0][i].requested, sum(row[i].measured for row in rows) / len(rows))
            for i in range(len(rows[0]))
        ]

    def markdown(self) -> str:
        """Per-digit AUROC table in percent, then the mean and the worst digit; then the
        false-alarm table when the report has one."""
        lines = [
            "| digit | " + " | ".join(f"AUROC {k}" for k in self.kinds) + " |",
            "|---:|" + "---:|" * len(self.kinds),
        ]
        rows = [(str(d), row) for d, row in self.auroc.items()]
        rows += [("**mean**", self.mean()), ("**min**", self.worst())]
        for label, row in rows:
            lines.append(
                f"| {label} | " + " | ".join(f"{100 * row[k]:.1f}" for k in self.kinds) + " |"
            )
        if self.false_alarms:
            lines += ["", *self._false_alarm_lines()]
        return "\n".join(lines)

    def _false_alarm_lines(self) -> list[str]:
        first = next(iter(self.false_alarms.values()))
        header = f"| digit | calibration images | expected at {_pct(first[0].requested)} (90%) |"
        header += "".join(f" flagged at {_pct(f.requested)} |" for f in first)
        lines = [header, "|---:|---:|---:|" + "---:|" * len(first)]
        for digit, alarms in self.false_alarms.items():
            low, high = alarms[0].interval
            cells = [
                str(digit),
                str(alarms[0].calibration_count),
                f"{_pct(alarms[0].expected)} ({_pct(low)}-{_pct(high)})",
                *(f"{_pct(a.measured)} ({a.flagged}/{a.held_out})" for a in alarms),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        means = [_pct(measured) for _, measured in self.mean_false_alarms()]
        lines.append("| **mean** | | | " + " | ".join(means) + " |")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "auroc": {str(d): row for d, row in self.auroc.items()},
            "mean": self.mean(),
            "min": self.worst(),
            "false_alarms": {
                str(d): [_alarm_dict(a) for a in alarms] for d, alarms in self.false_alarms.items()
            },
            "mean_false_alarms": [
                {"requested": r, "measured": m} for r, m in self.mean_false_alarms()
            ]
            if self.false_alarms
            else [],
        }


def run_anomaly(
    config: TrainConfig,
    images: ImageSet,
    digits: tuple[int, ...],
    kinds: tuple[ScoreKind, ...],
    work_dir: Path,
    log: Log = print,
    isolated_check: bool = True,
    test_fraction: float = 0.2,
) -> AnomalyReport:
    """The protocol over `digits`; per-digit runs and artifacts go under `work_dir`."""
    if images.labels is None:
        raise DataError("the anomaly protocol needs labelled data")
    missing = sorted(set(digits) - {int(v) for v in images.labels.unique()})
    if missing:
        raise DataError(f"--digits {missing} do not occur in the data's labels")
    aurocs: dict[int, dict[str, float]] = {}
    alarms: dict[int, tuple[FalseAlarms, ...]] = {}
    for digit in digits:
        log(f"--- digit {digit}: train on {digit} only, score every digit ---")
        result = evaluate_digit(
            config, images, digit, kinds, work_dir, log, isolated_check, test_fraction
        )
        aurocs[digit], alarms[digit] = result.auroc, result.false_alarms
        log(f"digit {digit}: " + "  ".join(f"{k} {100 * v:.1f}" for k, v in result.auroc.items()))
        log(
            f"digit {digit}: flagged "
            + "  ".join(f"{_pct(a.measured)} at {_pct(a.requested)}" for a in result.false_alarms)
        )
    return AnomalyReport(kinds, aurocs, alarms)


def evaluate_digit(
    config: TrainConfig,
    images: ImageSet,
    digit: int,
    kinds: tuple[ScoreKind, ...],
    work_dir: Path,
    log: Log = print,
    isolated_check: bool = True,
    test_fraction: float = 0.2,
) -> DigitResult:
    """Train and export on `digit`, then the AUROC of each score kind and the false alarms."""
    run_dir = work_dir / f"digit-{digit}"
    digit_config = replace(
        config,
        classes=(digit,),
        name=f"digit-{digit}",
        checkpoint_dir=str(run_dir / "runs"),
        out=str(run_dir / "model"),
        resume=None,
    )
    fractions = (config.val_fraction, config.calibration_fraction, test_fraction)
    train, val, calibration, test = hold_out(
        select_classes(images, (digit,)), fractions, config.seed
    )
    data = PreparedData(train, val, calibration, fingerprint(train))
    fit = fit_and_export(digit_config, data, log, isolated_check)
    device = resolve_device(config.device)
    artifact, metadata = load_artifact(fit.artifact, device)
    assert images.labels is not None  # checked by run_anomaly
    others = images.images[images.labels != digit]
    results: dict[str, float] = {}
    for kind in kinds:
        score = artifact.score if kind == config.score else _with_score(fit, kind, device).score
        normal = score_images(score, test.images, device)
        anomalous = score_images(score, others, device)
        results[kind] = auroc(normal, anomalous)
    normal = score_images(artifact.score, test.images, device)
    calibration_scores = score_images(artifact.score, calibration.images, device)
    extra = [r for r in EXTRA_RATES if r != config.false_alarm_rate]
    rates = (config.false_alarm_rate, *(r for r in extra if needed_count(r) <= len(calibration)))
    alarms = tuple(_false_alarms(calibration_scores, normal, rate) for rate in rates)
    assert alarms[0].flagged == int((normal > metadata.calibration.threshold).sum())
    return DigitResult(results, alarms)


def _false_alarms(calibration: Tensor, normal: Tensor, rate: float) -> FalseAlarms:
    """The split-conformal threshold on `calibration` at `rate`, applied to `normal`."""
    threshold = conformal_threshold(calibration, rate)
    expected, low, high = false_alarm_distribution(len(calibration), rate)
    flagged = int((normal > threshold).sum())
    return FalseAlarms(rate, expected, (low, high), len(calibration), flagged, len(normal))


def _alarm_dict(alarms: FalseAlarms) -> dict[str, Any]:
    return {
        "requested": alarms.requested,
        "expected": alarms.expected,
        "interval": list(alarms.interval),
        "calibration_count": alarms.calibration_count,
        "flagged": alarms.flagged,
        "held_out": alarms.held_out,
        "measured": alarms.measured,
    }


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def _with_score(fit: FitResult, kind: ScoreKind, device: torch.device) -> VAE:
    """The same weights and frozen noise, built to score with another kind."""
    variant = VAE(replace(fit.model_config, score=kind))
    variant.load_state_dict(fit.model.state_dict())
    return variant.to(device).eval()
