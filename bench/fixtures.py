"""The models the benchmark serves, exported through `app.artifact.save_artifact`.

- `trivial`: satisfies the artifact contract and computes almost nothing, so a service
  running it measures `r`, the service's own per-request cost. It takes the image shape
  and latent size of the model it stands beside, so that `r` includes the same image
  decoding, PNG encoding and JSON work.
- `heavy`: a convolutional VAE on 64x64 RGB with random weights, whose one-image
  encode takes 5 ms or more on a small CPU; three stride-2 convolutions and a wide dense
  layer, whose weights a batch reads once for all its rows (see `docs/benchmarks.md`).
- `mnist`: the shipped `models/mnist` when present; otherwise a stand-in with the
  default `ModelConfig` (the same network, random weights: the same cost).

Fixtures are built once per specification, network code and torch version, in a cache
folder.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from app.artifact import (
    FORMAT_VERSION,
    ModelMetadata,
    Preprocessing,
    read_metadata,
    save_artifact,
)
from app.config import DEFAULT_MODEL_DIR
from training.calibrate import calibrate
from training.model import VAE, ModelConfig

CALIBRATION_IMAGES = 64
HEAVY = ModelConfig(
    architecture="conv",
    channels=3,
    image_size=64,
    latent_dim=128,
    hidden=(48, 96, 192),
    dense=2048,  # the flattened 192x8x8 features -> 2048: most of the weights, read once per batch
    likelihood="gaussian",
    score="nelbo",  # one decoder pass per image: /anomaly costs about encode + decode
    score_samples=1,
)
MNIST_STANDIN = ModelConfig()


@dataclass(frozen=True)
class Shape:
    channels: int
    size: int  # square images
    latent_dim: int

    @classmethod
    def of(cls, source: ModelConfig | ModelMetadata) -> Shape:
        if isinstance(source, ModelConfig):
            return cls(source.channels, source.image_size, source.latent_dim)
        if source.height != source.width:
            raise ValueError("the benchmark's fixtures have square images")
        return cls(source.channels, source.height, source.latent_dim)


@dataclass(frozen=True)
class Subject:
    """A model under test: where its artifact lies and what it is."""

    name: str
    directory: Path
    metadata: ModelMetadata
    source: str  # "artifact" (given or shipped) or "fixture" (built here, random weights)


class TrivialVAE(nn.Module):
    """The artifact contract at almost no cost (a slice, a mean, a broadcast)."""

    def __init__(self, channels: int, size: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.shape = [channels, size, size]

    @torch.jit.export
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = x.flatten(1)[:, : self.latent_dim].clone()  # a copy: never alias the input
        return mu, torch.zeros_like(mu)

    @torch.jit.export
    def decode(self, z: Tensor) -> Tensor:
        level = torch.sigmoid(z[:, :1]).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
        return level.expand(-1, self.shape[0], self.shape[1], self.shape[2]).contiguous()

    @torch.jit.export
    def elbo(self, x: Tensor, samples: int) -> Tensor:
        return self.score(x)

    @torch.jit.export
    def iwae(self, x: Tensor, samples: int) -> Tensor:
        return self.score(x)

    @torch.jit.export
    def score(self, x: Tensor) -> Tensor:
        return x.flatten(1).mean(1)

    @torch.jit.export
    def pixel_nll(self, x: Tensor) -> Tensor:
        return x.clone()

    def forward(self, x: Tensor) -> Tensor:
        return self.score(x)


def default_cache() -> Path:
    return Path(tempfile.gettempdir()) / "vae-serve-bench"


def resolve(name: str, cache: Path) -> Subject:
    """`mnist`, `heavy`, `trivial` (MNIST-shaped) or the path of an artifact folder."""
    if name == "heavy":
        return _vae_fixture("heavy", HEAVY, cache)
    if name == "trivial":
        return trivial_for(Shape.of(MNIST_STANDIN), cache)
    if name == "mnist":
        if (DEFAULT_MODEL_DIR / "model.json").is_file():
            return Subject("mnist", DEFAULT_MODEL_DIR, read_metadata(DEFAULT_MODEL_DIR), "artifact")
        return _vae_fixture("mnist-standin", MNIST_STANDIN, cache)
    directory = Path(name)
    return Subject(directory.name, directory, read_metadata(directory), "artifact")


def trivial_for(shape: Shape, cache: Path) -> Subject:
    """The trivial model for images and latents of `shape`."""
    name = f"trivial-{shape.channels}x{shape.size}x{shape.size}-d{shape.latent_dim}"

    def build() -> tuple[nn.Module, ModelMetadata]:
        module = TrivialVAE(shape.channels, shape.size, shape.latent_dim)
        training = {"kind": "trivial: the service's own per-request cost"}
        scoring = ModelConfig(score="recon", score_samples=1)  # what its `score` stands for
        return module, _metadata(name, module, shape, "trivial", "bernoulli", scoring, training)

    return _cached(name, repr(shape), build, cache)


def _vae_fixture(name: str, config: ModelConfig, cache: Path) -> Subject:
    def build() -> tuple[nn.Module, ModelMetadata]:
        torch.manual_seed(0)
        model = VAE(config).eval()
        shape = Shape.of(config)
        training = {"model_config": config.to_dict(), "weights": "random (benchmark fixture)"}
        return model, _metadata(
            name, model, shape, config.architecture, config.likelihood, config, training
        )

    network = hashlib.sha256(Path(inspect.getfile(VAE)).read_bytes()).hexdigest()  # its code
    return _cached(name, f"{config!r}|{network}", build, cache)


def _metadata(
    name: str,
    model: VAE | TrivialVAE,
    shape: Shape,
    architecture: str,
    likelihood: str,
    scoring: ModelConfig,
    training: dict[str, Any],
) -> ModelMetadata:
    """Metadata with a calibration computed from the model's own scores on random images."""
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(
        CALIBRATION_IMAGES, shape.channels, shape.size, shape.size, generator=generator
    )
    with torch.inference_mode():
        scores = model.score(images)  # (N,)
    # 64 images allow a split-conformal threshold at 5% (1% needs 99)
    calibration = calibrate(scores, scoring, false_alarm_rate=0.05)
    return ModelMetadata(
        format_version=FORMAT_VERSION,
        name=f"bench-{name}",
        channels=shape.channels,
        height=shape.size,
        width=shape.size,
        latent_dim=shape.latent_dim,
        likelihood=likelihood,  # type: ignore[arg-type]
        architecture=architecture,
        preprocessing=Preprocessing(
            color_mode="L" if shape.channels == 1 else "RGB", scale=1.0 / 255.0
        ),
        calibration=calibration,
        metrics={"calibration_mean_score": float(scores.mean())},
        training=training,
        data_fingerprint=hashlib.sha256(b"torch.rand, seed 1").hexdigest(),
        torch_version=torch.__version__,
    )


def _cached(
    name: str, spec: str, build: Callable[[], tuple[nn.Module, ModelMetadata]], cache: Path
) -> Subject:
    key = hashlib.sha256(f"{spec}|{torch.__version__}|{FORMAT_VERSION}".encode()).hexdigest()
    directory = cache / f"{name}-{key[:12]}"
    if not (directory / "model.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        module, metadata = build()
        save_artifact(module, metadata, staging)
        try:
            staging.rename(directory)  # atomic: a concurrent builder's copy wins, ours goes
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        for stale in cache.glob(f"{name}-*"):  # earlier specifications of this fixture
            if stale != directory and len(stale.name) == len(directory.name):
                shutil.rmtree(stale, ignore_errors=True)
    return Subject(name, directory, read_metadata(directory), "fixture")
