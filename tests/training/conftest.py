"""Tiny synthetic data and a tiny recipe: the whole training test set runs in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import BEST
from training.cli import build_parser, main
from training.config import TrainConfig
from training.dataset import ImageSet
from training.flags import config_from_args
from training.model import VAE, ModelConfig
from training.pipeline import PreparedData, prepare_data


def bars(count: int, seed: int = 0) -> ImageSet:
    """Label 0: a horizontal bar in the top half; label 1: a vertical bar in the bottom
    half; each at a random position, so the two classes barely overlap."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 1, 28, 28)
    labels = torch.arange(count) % 2
    positions = torch.randint(6, 22, (count,), generator=generator).tolist()
    for i, (label, at) in enumerate(zip(labels.tolist(), positions, strict=True)):
        if label == 0:
            images[i, 0, at // 2 : at // 2 + 3, 4:24] = 1.0
        else:
            images[i, 0, 14:26, at - 2 : at + 1] = 1.0
    return ImageSet(images, labels)


@pytest.fixture(autouse=True, scope="package")
def one_cpu_thread():
    """Tiny models gain nothing from threads, and on a shared box spinning threads lose."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic() -> ImageSet:
    return bars(96)


@pytest.fixture
def tiny_config(tmp_path: Path) -> TrainConfig:
    return TrainConfig(
        data="synthetic",
        name="tiny",
        architecture="mlp",
        hidden=(32,),
        latent_dim=4,
        epochs=2,
        batch_size=16,
        lr=3e-3,
        warmup_epochs=0.0,
        augment_shift=0,
        device="cpu",
        score_samples=4,
        iwae_samples=8,
        false_alarm_rate=0.1,  # ten calibration images of 96 allow no less
        checkpoint_dir=str(tmp_path / "runs"),
        out=str(tmp_path / "model"),
    )


@pytest.fixture
def npz_file(tmp_path: Path, synthetic: ImageSet) -> Path:
    """The synthetic bars as a .npz: uint8 [N, H, W] images and integer labels."""
    path = tmp_path / "bars.npz"
    pixels = (synthetic.images[:, 0] * 255).round().to(torch.uint8).numpy()
    assert synthetic.labels is not None
    np.savez(path, images=pixels, labels=synthetic.labels.numpy())
    return path


TINY_FLAGS = [
    "--architecture", "mlp", "--hidden", "32", "--latent-dim", "4", "--epochs", "2",
    "--batch-size", "16", "--lr", "3e-3", "--warmup-epochs", "0", "--augment-shift", "0",
    "--device", "cpu", "--score-samples", "4", "--iwae-samples", "8",
    "--false-alarm-rate", "0.1",
]  # fmt: skip


@dataclass(frozen=True)
class TrainedRun:
    """One real `python -m training` run (in-process), shared by the tests that read it."""

    argv: list[str]
    config: TrainConfig
    data: PreparedData
    model: VAE  # rebuilt from best.pt: the weights the artifact must hold

    @property
    def artifact(self) -> Path:
        return self.config.artifact_path


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    return list(TINY_FLAGS)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    base = tmp_path_factory.mktemp("trained-run")
    images = bars(96)
    assert images.labels is not None
    pixels = (images.images[:, 0] * 255).round().to(torch.uint8).numpy()
    np.savez(base / "bars.npz", images=pixels, labels=images.labels.numpy())
    argv = [
        "--data", str(base / "bars.npz"), *TINY_FLAGS, "--name", "tiny",
        "--checkpoint-dir", str(base / "runs"), "--out", str(base / "model"),
    ]  # fmt: skip
    assert main(argv) == 0
    config = config_from_args(build_parser().parse_args(argv))
    state = torch.load(config.checkpoint_path / BEST, weights_only=True)
    model = VAE(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return TrainedRun(argv, config, prepare_data(config), model.eval())
