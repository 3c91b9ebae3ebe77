"""One training run from data to verified artifact: what `python -m training` does.

    load -> filter classes -> split -> train -> evaluate -> calibrate -> export

The anomaly protocol (`training.anomaly`) runs the same steps once per digit. Under
torchrun every rank loads and trains, and rank 0 alone evaluates and exports
(`training.distributed`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.artifact import Calibration
from training import distributed
from training.calibrate import calibrate, score_images
from training.config import TrainConfig
from training.data import load_images
from training.dataset import ImageSet, fingerprint, select_classes, split
from training.distributed import ALONE, World
from training.export import build_metadata, export_artifact
from training.metrics import validation_metrics
from training.model import VAE, ModelConfig
from training.train import Log, TrainResult, resolve_device, train

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
    return evaluate_and_export(config, data, fit(config, data, log), log, isolated_check)


def _log_now(line: str) -> None:
    print(line, flush=True)  # ranks share torchrun's stdout: unflushed lines can be lost


def run(config: TrainConfig, log: Log = _log_now) -> FitResult | None:
    """`python -m training`. Under torchrun every rank trains on its shards, then rank 0
    evaluates and exports while the others wait for it and return None."""
    world = distributed.current()
    with distributed.process_group(world, world.rank_device(resolve_device(config.device))):
        data = prepare_data(config)
        result = fit(config, data, world.main_only(log), world)
        if world.size > 1:  # every rank, so that its shard shows
            log(
                f"rank {world.rank} of {world.size} trained on {result.images_trained} images, "
                f"its shards of {len(data.train)} per epoch"
            )
        fitted = None
        if world.is_main:
            fitted = evaluate_and_export(config, data, result, log, world_size=world.size)
        world.barrier()  # no rank exits before the artifact is written
    return fitted


def fit(
    config: TrainConfig, data: PreparedData, log: Log = print, world: World = ALONE
) -> TrainResult:
    """Train on `data.train`, keeping the weights that do best on `data.val`."""
    log(f"training on {len(data.train)} images, validating on {len(data.val)}")
    model_config = config.model_config(data.train.channels)
    return train(config, model_config, data.train, data.val, data.fingerprint, log, world)


def evaluate_and_export(
    config: TrainConfig,
    data: PreparedData,
    result: TrainResult,
    log: Log = print,
    isolated_check: bool = True,
    world_size: int = 1,
) -> FitResult:
    """Measure the trained model, calibrate its score, export and verify the artifact."""
    model_config = config.model_config(data.train.channels)
    log(f"evaluating: negative ELBO and IWAE (k={config.iwae_samples}) on the validation split")
    metrics = validation_metrics(result.model, data.val.images, config.iwae_samples, config.seed)
    metrics |= result.metrics() | {"train_images": float(len(data.train))}
    model = copy.deepcopy(result.model).cpu()  # the artifact and its calibration run on CPU
    scores = score_images(model.score, data.val.images)
    calibration = calibrate(scores, model_config, config.threshold_quantile)
    metadata = build_metadata(
        config, model_config, calibration, metrics, data.fingerprint, world_size
    )
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


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
