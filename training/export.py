"""Write the artifact through `app.artifact` (the contract) and verify it.

The exporter builds `ModelMetadata`, saves with `save_artifact`, loads back with
`load_artifact`, and runs the checks in `training.verify`. An artifact that fails a
check is left on disk for inspection, but the run ends with an `ExportError`.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from app.artifact import (
    FORMAT_VERSION,
    ArtifactError,
    Calibration,
    ModelMetadata,
    SamplingPrior,
    load_artifact,
    save_artifact,
)
from app.preprocessing import preprocessing_for
from training import verify
from training.config import TrainConfig
from training.errors import ExportError
from training.model import ModelConfig

if TYPE_CHECKING:
    from training.model import AnyVAE


def build_metadata(
    config: TrainConfig,
    model_config: ModelConfig,
    calibration: Calibration,
    metrics: dict[str, float],
    data_fingerprint: str,
    world_size: int = 1,
    prior_components: int = 0,
) -> ModelMetadata:
    """Everything `model.json` holds; `training` is the full recipe plus the network and
    the number of processes it ran on (torchrun's world size)."""
    return ModelMetadata(
        format_version=FORMAT_VERSION,
        name=config.run_name,
        channels=model_config.channels,
        height=model_config.image_height,
        width=model_config.image_width,
        latent_dim=model_config.latent_dim,
        likelihood=model_config.likelihood,
        architecture=model_config.architecture,
        preprocessing=preprocessing_for(model_config.channels),
        calibration=calibration,
        sampling_prior=sampling_prior(prior_components),
        metrics=metrics,
        training={
            **config.to_dict(),
            "model_config": model_config.to_dict(),
            "world_size": world_size,
        },
        data_fingerprint=data_fingerprint,
        torch_version=torch.__version__,
        created_at=datetime.now(UTC),
    )


def sampling_prior(components: int) -> SamplingPrior:
    """The metadata of a model with `components` mixture components fitted (0: none)."""
    if components == 0:
        return SamplingPrior(kind="standard-normal")
    return SamplingPrior(kind="gaussian-mixture", components=components)


def export_artifact(
    model: AnyVAE,
    metadata: ModelMetadata,
    directory: Path,
    *,
    calibration_images: Tensor,
    calibration_scores: Tensor,
    isolated_check: bool = True,
) -> Path:
    """Save, reload and verify; the artifact's weights live on the CPU."""
    eager = copy.deepcopy(model).cpu().eval()
    try:
        save_artifact(eager, metadata, directory)
        loaded, _ = load_artifact(directory)
    except ArtifactError as exc:
        raise ExportError(str(exc)) from None
    verify.check_matches_eager(eager, loaded, calibration_images)
    verify.check_scores(loaded, calibration_images, calibration_scores)
    if isolated_check:
        verify.check_isolated(directory)
    return directory
