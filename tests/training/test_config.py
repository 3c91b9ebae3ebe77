"""The recipe: the shipped defaults live in one place and every bad value is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.artifact import read_metadata
from training.config import TrainConfig
from training.errors import ConfigError


def test_the_shipped_model_is_the_default_recipe() -> None:
    """models/mnist was trained with today's defaults for every flag it knew. It predates
    the calibration split (its threshold is a validation quantile), so `make model` now
    trains on the 4,000 digits the new split leaves rather than 4,500 (README)."""
    shipped = read_metadata(Path(__file__).parents[2] / "models" / "mnist")
    assert "calibration_fraction" not in shipped.training
    assert shipped.calibration.method == "quantile"
    assert TrainConfig.from_dict(shipped.training) == TrainConfig()
    assert TrainConfig().validate() == TrainConfig()


def test_the_model_config_takes_every_network_field_from_the_recipe() -> None:
    recipe = TrainConfig(architecture="mlp", hidden=(7,), dense=9, latent_dim=3, seed=4)
    model = recipe.model_config(channels=3)
    assert (model.architecture, model.hidden, model.dense, model.latent_dim) == ("mlp", (7,), 9, 3)
    assert (model.channels, model.image_size, model.score_seed) == (3, 28, 4)


def test_names_and_default_paths() -> None:
    assert TrainConfig().run_name == "mnist"
    assert TrainConfig().checkpoint_path == Path("runs/mnist")
    assert TrainConfig().artifact_path == Path("models/mnist")
    assert TrainConfig(data="photos/cats/").run_name == "cats"
    assert TrainConfig(data="x/digits.npz", name="d").artifact_path == Path("models/d")


def test_an_old_threshold_quantile_becomes_the_rate_it_leaves() -> None:
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "false_alarm_rate"}
    assert TrainConfig.from_dict({**old, "threshold_quantile": 0.95}).false_alarm_rate == (
        pytest.approx(0.05)
    )


def test_the_threshold_quantile_flag_is_the_complement_of_the_rate() -> None:
    from training.cli import build_parser
    from training.flags import config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["--threshold-quantile", "0.95"])).false_alarm_rate == (
        pytest.approx(0.05)
    )
    assert config_from_args(parse(["--false-alarm-rate", "0.02"])).false_alarm_rate == 0.02
    assert config_from_args(parse([])).false_alarm_rate == 0.01


def test_the_config_round_trips_through_a_dict() -> None:
    recipe = TrainConfig(classes=(0, 1), hidden=(8, 16), max_minutes=2.5)
    assert TrainConfig.from_dict(recipe.to_dict()) == recipe
    assert TrainConfig.from_dict({**recipe.to_dict(), "hidden": [8, 16], "gone": 1}) == recipe


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"architecture": "rnn"}, "--architecture"),
        ({"likelihood": "poisson"}, "--likelihood"),
        ({"score": "psychic"}, "--score"),
        ({"image_size": 27}, "--image-size"),
        ({"image_size": 129}, "--image-size"),
        ({"channels": 2}, "--channels"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"classes": ()}, "--classes"),
        ({"hidden": ()}, "--hidden"),
        ({"latent_dim": 0}, "--latent-dim"),
        ({"epochs": 0}, "--epochs"),
        ({"lr": 0.0}, "--lr"),
        ({"free_bits": -1.0}, "--free-bits"),
        ({"augment_shift": 14}, "--augment-shift"),
        ({"false_alarm_rate": 0.0}, "--false-alarm-rate"),
        ({"false_alarm_rate": 1.0}, "--false-alarm-rate"),
        ({"calibration_fraction": 0.0}, "--calibration-fraction"),
        ({"val_fraction": 0.5, "calibration_fraction": 0.5}, "--calibration-fraction"),
        ({"max_minutes": 0.0}, "--max-minutes"),
        ({"threads": 0}, "--threads"),
    ],
)
def test_a_bad_value_names_its_flag(change: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        dataclasses.replace(TrainConfig(), **change).validate()
