"""The training loop: loss terms, schedules, augmentation, checkpoints and --resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from training.augment import shift_augment
from training.budget import kl_warmup
from training.checkpoint import BEST, LAST
from training.config import TrainConfig
from training.dataset import ImageSet, fingerprint, split
from training.errors import CheckpointError, ConfigError
from training.metrics import negative_elbo
from training.model import VAE, LossWeights, ModelConfig
from training.train import EpochStats, cosine_lr, describe_loss, loss_terms, resolve_device, train


def run(config: TrainConfig, images: ImageSet, log=lambda line: None):
    train_set, val_set = split(images, 0.25, config.seed)
    model_config = config.model_config(channels=1)
    return train(config, model_config, train_set, val_set, fingerprint(train_set), log)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_a_tiny_training_run_lowers_the_loss(tiny_config, synthetic, likelihood: str) -> None:
    config = dataclasses.replace(tiny_config, epochs=4, likelihood=likelihood)
    torch.manual_seed(config.seed)  # train() starts from exactly these weights
    untrained = VAE(config.model_config(channels=1)).eval()
    _, val_set = split(synthetic, 0.25, config.seed)
    before = float(negative_elbo(untrained, val_set.images).mean())
    lines: list[str] = []
    result = run(config, synthetic, lines.append)
    assert result.best_val_nelbo < before - 0.2 * abs(before)
    assert result.epochs == 4 and 1 <= result.best_epoch <= 4
    assert result.images_per_second > 0
    assert any("img/s" in line and "val nelbo" in line for line in lines)


def test_max_minutes_stops_after_the_current_epoch(tiny_config, synthetic) -> None:
    lines: list[str] = []
    result = run(
        dataclasses.replace(tiny_config, epochs=50, max_minutes=1e-9), synthetic, lines.append
    )
    assert result.epochs == 1
    assert lines[-1].startswith("--max-minutes")


def test_free_bits_floor_each_dimensions_batch_averaged_kl(tiny_config, synthetic) -> None:
    torch.manual_seed(0)
    model = VAE(tiny_config.model_config(channels=1))
    x = synthetic.images[:8]
    with torch.no_grad():
        torch.manual_seed(1)
        loss, recon, kl, map_term = loss_terms(
            model, x, LossWeights(beta=2.0, free_bits=100.0), warmup=1.0
        )
        assert float(map_term) == 0.0  # only a spatial model has a map head
        assert float(kl) < 4 * 100.0  # every dimension sits below the floor...
        assert torch.isclose(loss - recon, torch.tensor(2.0 * 4 * 100.0))  # ...so pays it
        torch.manual_seed(1)
        loss, recon, kl, _ = loss_terms(model, x, LossWeights(beta=2.0), warmup=1.0)
        assert torch.isclose(loss, recon + 2.0 * kl)


def test_kl_warmup_and_cosine_schedule() -> None:
    assert [kl_warmup(s, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert kl_warmup(0, 0) == 1.0
    assert cosine_lr(0.0, 1e-3) == pytest.approx(1e-3)
    assert cosine_lr(0.5, 1e-3) == pytest.approx(0.505e-3)
    assert cosine_lr(1.0, 1e-3) == pytest.approx(1e-5)


def test_shift_augment_moves_each_image_by_at_most_the_shift() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    shifted = shift_augment(x, 2)
    assert shifted.shape == x.shape and torch.equal(shift_augment(x, 0), x)
    assert torch.equal(shifted.sum((1, 2, 3)), torch.ones(64))  # moved, never lost
    rows, cols = shifted[:, 0].nonzero()[:, 1], shifted[:, 0].nonzero()[:, 2]
    assert (rows - 14).abs().max() <= 2 and (cols - 14).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5  # per-image offsets


def test_checkpoints_load_with_weights_only(tiny_config: TrainConfig, synthetic) -> None:
    run(tiny_config, synthetic)
    for name in (LAST, BEST):
        state = torch.load(tiny_config.checkpoint_path / name, weights_only=True)
        rebuilt = VAE(ModelConfig.from_dict(state["model_config"]))
        rebuilt.load_state_dict(state["model"])
        assert TrainConfig.from_dict(state["train_config"]) == tiny_config
    last = torch.load(tiny_config.checkpoint_path / LAST, weights_only=True)
    assert last["epoch"] == 2 and "optimizer" in last and last["best_model"] is not None


def test_resume_continues_exactly_where_the_run_stopped(tiny_config, synthetic) -> None:
    config = dataclasses.replace(tiny_config, epochs=3, augment_shift=1, warmup_epochs=1.0)
    straight = run(
        dataclasses.replace(config, checkpoint_dir=str(Path(config.out) / "a")), synthetic
    )

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config, synthetic, stop_after_epoch_1)
    assert torch.load(config.checkpoint_path / LAST, weights_only=True)["epoch"] == 1
    lines: list[str] = []
    resumed_config = dataclasses.replace(config, resume=str(config.checkpoint_path / LAST))
    resumed = run(resumed_config, synthetic, lines.append)
    assert lines[0].startswith("resumed from") and lines[1].startswith("epoch 2/3")
    assert resumed.epochs == 3 and resumed.best_epoch == straight.best_epoch
    for name, weight in straight.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[name], weight, atol=1e-6), name


def test_resume_refuses_another_model_or_a_missing_file(tiny_config, synthetic) -> None:
    run(dataclasses.replace(tiny_config, epochs=1), synthetic)
    last = str(tiny_config.checkpoint_path / LAST)
    with pytest.raises(CheckpointError, match="latent_dim=4"):
        run(dataclasses.replace(tiny_config, latent_dim=5, resume=last), synthetic)
    with pytest.raises(CheckpointError, match="different data"):
        run(dataclasses.replace(tiny_config, resume=last), ImageSet(synthetic.images * 0.5))
    with pytest.raises(CheckpointError, match="not found"):
        run(dataclasses.replace(tiny_config, resume=last + ".gone"), synthetic)


def test_device_auto_selection() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_resume_keeps_the_throughput_of_the_epochs_before_it(tiny_config, synthetic) -> None:
    first = run(tiny_config, synthetic)
    last = str(tiny_config.checkpoint_path / LAST)
    again = run(dataclasses.replace(tiny_config, resume=last), synthetic)  # nothing left to do
    assert again.epochs == 2 and again.images_trained == 0
    assert first.images_per_second > 0
    assert again.images_per_second == pytest.approx(first.images_per_second)
    run(dataclasses.replace(tiny_config, epochs=3, resume=last), synthetic)
    state = torch.load(tiny_config.checkpoint_path / LAST, weights_only=True)
    assert state["images"] == 3 * 72 and state["train_seconds"] > 0  # 72: 96 less a quarter


def test_the_progress_line_shows_the_loss_as_its_sum(tiny_config) -> None:
    stats = EpochStats(loss=110.0, recon=100.0, kl=20.0, images=64)
    assert (
        describe_loss(stats, tiny_config, warmup=1.0)
        == "loss 110.00 = recon 100.00 + 0.50 x kl 20.00"
    )
    during = describe_loss(stats, dataclasses.replace(tiny_config, beta=2.0), warmup=0.25)
    assert during.endswith("(KL warm-up: the weight rises to beta=2)")
    floored = describe_loss(stats, dataclasses.replace(tiny_config, free_bits=0.5), warmup=1.0)
    assert "kl term 10.00 (kl 20.00, free bits 0.5/dim)" in floored
