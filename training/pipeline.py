"""One training run from data to verified artifact: what `python -m training` does.

    load -> filter classes -> split -> train -> evaluate -> calibrate -> export

The anomaly protocol (`training.anomaly`) runs the same steps once per digit.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.artifact import Calibration
from training.calibrate import calibrate, score_images
from training.config import TrainConfig
from training.data import load_images
from training.dataset import ImageSet, fingerprint, select_classes, split
from training.export import build_metadata, export_artifact
from training.metrics import validation_metrics
from training.model import VAE, ModelConfig
from training.train import Log, train

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class PreparedData:
    train: ImageSet
    val: ImageSet  # drives best-checkpoint selection and the calibration
    fingerprint: str  # of the training split


@dataclass(frozen=True)
class FitResult:
    model: VAE  # the best weights, on the CPU, eval mode
    model_config: ModelConfig
    artifact: Path
    metrics: dict[str, float]
    calibration: Calibration


def prepare_data(config: TrainConfig, images: ImageSet | None = None) -> PreparedData:
    """Load `config.data` (or take `images`), keep `config.classes`, split deterministically."""
    if images is None:
        images = load_images(config.data, config.image_size, config.channels)
    if config.classes is not None:
        images = select_classes(images, config.classes)
    train_set, val_set = split(images, config.val_fraction, config.seed)
    return PreparedData(train_set, val_set, fingerprint(train_set))


def fit_and_export(
    config: TrainConfig, data: PreparedData, log: Log = print, isolated_check: bool = True
) -> FitResult:
    """Train on `data`, measure, calibrate, export and verify the artifact."""
    model_config = config.model_config(data.train.channels)
    log(f"training on {len(data.train)} images, validating on {len(data.val)}")
    result = train(config, model_config, data.train, data.val, data.fingerprint, log)
    log(f"evaluating: negative ELBO and IWAE (k={config.iwae_samples}) on the validation split")
    metrics = validation_metrics(result.model, data.val.images, config.iwae_samples, config.seed)
    metrics |= result.metrics() | {"train_images": float(len(data.train))}
    model = copy.deepcopy(result.model).cpu()  # the artifact and its calibration run on CPU
    scores = score_images(model.score, data.val.images)
    calibration = calibrate(scores, model_config, config.threshold_quantile)
    metadata = build_metadata(config, model_config, calibration, metrics, data.fingerprint)
    artifact = export_artifact(
        model,
        metadata,
        config.artifact_path,
        calibration_images=data.val.images,
        calibration_scores=scores,
        isolated_check=isolated_check,
    )
    write_json(config.checkpoint_path / METRICS_FILE, {"name": config.run_name, **metrics})
    return FitResult(model, model_config, artifact, metrics, calibration)


def run(config: TrainConfig, log: Log = print) -> FitResult:
    return fit_and_export(config, prepare_data(config), log)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
