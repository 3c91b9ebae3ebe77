"""Sample quality, and issue 14's promise: a model trained on RGB photos generates photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.artifact import load_artifact
from training.config import TrainConfig
from training.photos import PHOTOS, build_photo_set
from training.pipeline import fit_and_export, prepare_data
from training.samples import draw_samples, features, frechet_distance

# The share of a tiny RGB Gaussian model's samples (temperature 1) that its own anomaly
# score calls normal must reach this, from its sampling prior; held-out photos: about 99%.
NORMAL_SHARE_FLOOR = 0.8


def test_the_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 3, generator=generator).double()
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(a, a + torch.tensor([1.0, 2.0, 0.0]).double())
    assert shifted == pytest.approx(5.0, rel=1e-6)  # |mu_a - mu_b|^2, the same covariance
    assert features(torch.rand(4, 3, 28, 28)).shape == (4, 3 * 64)


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> tuple[TrainConfig, Path]:
    """A tiny Gaussian MLP trained through the real pipeline on crops of the bundled photos."""
    base = tmp_path_factory.mktemp("photos")
    build_photo_set(base / "photos", count=400, size=28)
    config = TrainConfig(
        data=str(base / "photos"), channels=3, likelihood="gaussian", architecture="mlp",
        hidden=(128,), latent_dim=8, epochs=12, batch_size=32, lr=3e-3, warmup_epochs=2.0,
        augment_shift=0, device="cpu", iwae_samples=4, prior_components=4,
        false_alarm_rate=0.05,  # the 40 calibration crops of 400 can hold 5%, not 1%
        checkpoint_dir=str(base / "runs"), out=str(base / "model"),
    )  # fmt: skip
    fit = fit_and_export(config, prepare_data(config), log=lambda line: None, isolated_check=False)
    return config, fit.artifact


def test_the_photo_set_is_labelled_crops_of_every_photo(photo_run) -> None:
    config, _ = photo_run
    folders = sorted(p.name for p in Path(config.data).iterdir())
    assert folders == [str(i) for i in range(len(PHOTOS))]
    assert all(len(list((Path(config.data) / f).glob("*.png"))) == 100 for f in folders)


def test_a_tiny_rgb_model_samples_what_it_was_trained_on(photo_run) -> None:
    _, artifact = photo_run
    module, meta = load_artifact(artifact)
    assert (meta.sampling_prior.kind, meta.sampling_prior.components) == ("gaussian-mixture", 4)
    metrics = meta.metrics
    assert metrics["sample_normal_share"] >= NORMAL_SHARE_FLOOR
    assert metrics["sample_fd"] == metrics["sample_fd_mixture"]
    assert metrics["data_fd"] < metrics["sample_fd_mixture"] < metrics["sample_fd_standard_normal"]
    drawn = draw_samples(module.decode, module.prior_latents, 8, meta.latent_dim, seed=1)
    assert drawn.shape == (8, 3, 28, 28) and torch.equal(
        drawn, draw_samples(module.decode, module.prior_latents, 8, meta.latent_dim, seed=1)
    )
