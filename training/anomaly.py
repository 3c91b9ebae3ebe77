"""The one-class anomaly protocol (as in Deep SVDD, Ruff et al. 2018) on labelled digits.

For each digit k: train on the training split of digit k only; score the held-out
validation images of k ("normal") and every image of the other digits ("anomalous",
never trained on); report the AUROC of anomalous against normal. The shipped score
kind comes from the exported artifact's own `score`; every other kind is the same
weights' `score` with the kind switched, which is what shipping that kind would give.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from app.artifact import load_artifact
from training.calibrate import score_images
from training.config import TrainConfig
from training.dataset import ImageSet
from training.errors import DataError
from training.model import VAE, ScoreKind
from training.pipeline import FitResult, fit_and_export, prepare_data
from training.roc import auroc
from training.train import Log, resolve_device


@dataclass(frozen=True)
class AnomalyReport:
    kinds: tuple[ScoreKind, ...]
    auroc: dict[int, dict[str, float]]  # digit -> score kind -> AUROC in [0, 1]

    def mean(self) -> dict[str, float]:
        return {k: sum(row[k] for row in self.auroc.values()) / len(self.auroc) for k in self.kinds}

    def worst(self) -> dict[str, float]:
        return {k: min(row[k] for row in self.auroc.values()) for k in self.kinds}

    def markdown(self) -> str:
        """Per-digit AUROC table in percent, then the mean and the worst digit."""
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
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "auroc": {str(d): row for d, row in self.auroc.items()},
            "mean": self.mean(),
            "min": self.worst(),
        }


def run_anomaly(
    config: TrainConfig,
    images: ImageSet,
    digits: tuple[int, ...],
    kinds: tuple[ScoreKind, ...],
    work_dir: Path,
    log: Log = print,
    isolated_check: bool = True,
) -> AnomalyReport:
    """The protocol over `digits`; per-digit runs and artifacts go under `work_dir`."""
    if images.labels is None:
        raise DataError("the anomaly protocol needs labelled data")
    missing = sorted(set(digits) - {int(v) for v in images.labels.unique()})
    if missing:
        raise DataError(f"--digits {missing} do not occur in the data's labels")
    results: dict[int, dict[str, float]] = {}
    for digit in digits:
        log(f"--- digit {digit}: train on {digit} only, score every digit ---")
        results[digit] = evaluate_digit(config, images, digit, kinds, work_dir, log, isolated_check)
        log(f"digit {digit}: " + "  ".join(f"{k} {100 * v:.1f}" for k, v in results[digit].items()))
    return AnomalyReport(kinds, results)


def evaluate_digit(
    config: TrainConfig,
    images: ImageSet,
    digit: int,
    kinds: tuple[ScoreKind, ...],
    work_dir: Path,
    log: Log = print,
    isolated_check: bool = True,
) -> dict[str, float]:
    """Train and export on `digit`, then the AUROC of each score kind."""
    run_dir = work_dir / f"digit-{digit}"
    digit_config = replace(
        config,
        classes=(digit,),
        name=f"digit-{digit}",
        checkpoint_dir=str(run_dir / "runs"),
        out=str(run_dir / "model"),
        resume=None,
    )
    data = prepare_data(digit_config, images)
    fit = fit_and_export(digit_config, data, log, isolated_check)
    device = resolve_device(config.device)
    artifact, _ = load_artifact(fit.artifact, device)
    assert images.labels is not None  # checked by run_anomaly
    others = images.images[images.labels != digit]
    results: dict[str, float] = {}
    for kind in kinds:
        score = artifact.score if kind == config.score else _with_score(fit, kind, device).score
        normal = score_images(score, data.val.images, device)
        anomalous = score_images(score, others, device)
        results[kind] = auroc(normal, anomalous)
    return results


def _with_score(fit: FitResult, kind: ScoreKind, device: torch.device) -> VAE:
    """The same weights and frozen noise, built to score with another kind."""
    variant = VAE(replace(fit.model_config, score=kind))
    variant.load_state_dict(fit.model.state_dict())
    return variant.to(device).eval()
