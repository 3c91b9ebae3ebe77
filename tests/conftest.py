"""Shared fixtures: the anyio backend, a clean `VAE_*` environment, and a tiny real artifact.

The artifact is a real `training.model.VAE` (an MLP with latent size 4), trained for a
few steps on random images and exported through `app.artifact.save_artifact`, the same
path the trainer uses; its calibration comes from the model's own scores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.artifact import FORMAT_VERSION, ModelMetadata, Preprocessing, save_artifact
from training.calibrate import calibrate
from training.model import VAE, ModelConfig

TINY = ModelConfig(architecture="mlp", hidden=(32,), latent_dim=4, image_size=28, score_samples=4)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """No `VAE_*` variable of the machine running the tests reaches a test's settings."""
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("VAE_")}
    yield
    os.environ.update(saved)


def train_tiny_vae(steps: int = 20, seed: int = 0) -> VAE:
    """A few Adam steps on random binary-ish images: enough for non-trivial weights."""
    torch.manual_seed(seed)
    model = VAE(TINY)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        images = (torch.rand(32, 1, 28, 28) > 0.7).float()
        recon, kl, _ = model(images)
        loss = (recon + kl.sum(1)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def tiny_metadata(model: VAE) -> ModelMetadata:
    with torch.no_grad():
        scores = model.score((torch.rand(200, 1, 28, 28) > 0.7).float())
    calibration = calibrate(scores, TINY, false_alarm_rate=0.01)
    return ModelMetadata(
        format_version=FORMAT_VERSION,
        name="tiny-test-vae",
        channels=1,
        height=28,
        width=28,
        latent_dim=TINY.latent_dim,
        likelihood="bernoulli",
        architecture="mlp",
        preprocessing=Preprocessing(color_mode="L"),
        calibration=calibration,
        metrics={"test_nelbo": float(scores.mean())},
        training=TINY.to_dict(),
        data_fingerprint="0" * 64,
        torch_version=torch.__version__,
    )


@pytest.fixture(scope="session")
def tiny_vae() -> VAE:
    return train_tiny_vae()


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory, tiny_vae: VAE) -> Path:
    """A real exported artifact folder (model.pt + model.json) for the tiny VAE."""
    directory = tmp_path_factory.mktemp("artifact")
    return save_artifact(tiny_vae, tiny_metadata(tiny_vae), directory)


@pytest.fixture(scope="session")
def make_artifact(tmp_path_factory: pytest.TempPathFactory):
    """`make_artifact(seed)`: a real exported tiny VAE trained from `seed` (cached), so
    that two seeds give two models whose answers differ."""
    made: dict[int, Path] = {}

    def make(seed: int) -> Path:
        if seed not in made:
            model = train_tiny_vae(seed=seed)
            directory = tmp_path_factory.mktemp(f"artifact-seed{seed}")
            made[seed] = save_artifact(model, tiny_metadata(model), directory)
        return made[seed]

    return make


TINY_SPATIAL = ModelConfig(
    architecture="spatial",
    channels=1,
    image_size=48,
    work_size=(48, 64),
    latent_dim=4 * 12 * 16,
    hidden=(8, 16),
    likelihood="gaussian",
    score="map",
    latent_channels=4,
    crop=16,
    crops_per_image=2,
    map_hidden=(8, 16),
    map_sigma=2.0,
)


@pytest.fixture(scope="session")
def spatial_artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported inspection model (`training.spatial`) of 64x48 images, a few
    training steps on smooth random images, calibrated on its own map scores."""
    from training.model import build_model

    torch.manual_seed(0)
    model = build_model(TINY_SPATIAL)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(10):
        images = torch.rand(4, 1, 48, 64) * 0.2 + 0.4
        recon, kl, _, map_term = model(images)
        loss = (recon + kl.sum(1) + map_term).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        scores = model.score(torch.rand(40, 1, 48, 64) * 0.2 + 0.4)
    metadata = tiny_metadata(model).model_copy(
        update={
            "name": "tiny-spatial",
            "height": 48,
            "width": 64,
            "latent_dim": TINY_SPATIAL.latent_dim,
            "likelihood": "gaussian",
            "architecture": "spatial",
            "calibration": calibrate(scores, TINY_SPATIAL, false_alarm_rate=0.1),
            "training": TINY_SPATIAL.to_dict(),
        }
    )
    return save_artifact(model, metadata, tmp_path_factory.mktemp("spatial-artifact"))
