from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.artifact import load_artifact
from training.cli import build_parser, main
from training.config import TrainConfig
from training.density import COMPONENTS
from training.errors import ConfigError
from training.flags import config_from_args, explicit_flags
from training.pipeline import working_size
from training.presets import PRESETS
from training.selection import SHARES, SIGMAS


def config_for(argv: list[str]) -> TrainConfig:
    parser = build_parser()
    return config_from_args(parser.parse_args(argv), explicit_flags(parser, argv))


def test_the_inspection_preset_sets_its_recipe():
    config = config_for(["--preset", "inspection"])
    for key, value in PRESETS["inspection"].items():
        assert getattr(config, key) == value, key
    assert config.preset == "inspection"


def test_a_flag_given_explicitly_overrides_the_preset_even_at_the_plain_default():
    config = config_for(["--preset", "inspection", "--crop", "32", "--lr", "0.001"])
    assert config.crop == 32
    assert config.lr == 0.001  # TrainConfig's own default, but given: it wins over 0.002
    assert config.architecture == "spatial"


def test_without_a_preset_the_defaults_are_the_mnist_recipe():
    assert config_for([]) == TrainConfig().validate()


def test_spatial_flags_are_checked():
    with pytest.raises(ConfigError, match="--crop must be a multiple of 8"):
        config_for(["--preset", "inspection", "--crop", "20"])
    with pytest.raises(ConfigError, match="--score map"):
        config_for(["--preset", "inspection", "--score", "nelbo"])
    with pytest.raises(ConfigError, match="needs --architecture spatial"):
        config_for(["--score", "map"])


@pytest.mark.parametrize(
    ("image_size", "native", "expected"),
    [
        (0, (300, 300), (304, 304)),  # the data's own, on the stride
        (0, (768, 1024), (384, 512)),  # capped at 512 on the long side
        (256, (300, 450), (168, 256)),
        (1024, (1000, 1000), (1024, 1024)),
    ],
)
def test_the_working_size_follows_the_data(image_size, native, expected):
    config = TrainConfig(architecture="spatial", score="map", image_size=image_size)
    assert working_size(config, native) == expected


def test_a_crop_larger_than_the_working_size_is_refused():
    config = TrainConfig(architecture="spatial", score="map", image_size=48, crop=64)
    with pytest.raises(ConfigError, match="--crop 64 does not fit"):
        working_size(config, (300, 300))


TINY_INSPECTION = [
    "--preset", "inspection", "--crop", "16", "--hidden", "8,16", "--map-hidden", "8,16",
    "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--iwae-samples", "2",
    "--max-minutes", "5",
    "--calibration-fraction", "0.25", "--false-alarm-rate", "0.2",  # 6 of 24 calibrate
]  # fmt: skip


def test_the_inspection_preset_trains_and_exports_a_full_resolution_detector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    rng = np.random.default_rng(0)
    folder = tmp_path / "parts"
    folder.mkdir()
    for index in range(24):  # 57x40 photos: the model works at their own size
        pixels = (rng.uniform(0.3, 0.7, (40, 57)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:02d}.png")
    argv = [
        "--data", str(folder), *TINY_INSPECTION, "--name", "parts",
        "--checkpoint-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "model"),
    ]  # fmt: skip
    assert main(argv) == 0
    module, metadata = load_artifact(tmp_path / "model")
    assert (metadata.height, metadata.width) == (40, 56)  # 57 -> 56: a multiple of the stride
    assert metadata.architecture == "spatial" and metadata.calibration.score == "map"
    assert metadata.metrics["map_sigma"] in SIGMAS
    names = ("rare_share", "plain_share", "place_share")
    assert tuple(metadata.metrics[name] for name in names) in SHARES
    assert float(module.density.weight.abs().sum()) > 0  # fitted on the training images
    assert float(module.density.mixture_weight.abs().sum()) > 0
    assert metadata.metrics["patch_components"] == module.density.components == COMPONENTS
    assert module.place.mean.shape == (1, 40, 56)  # a Gaussian of the images at their size
    assert metadata.metrics["place_directions"] == module.place.basis.shape[0] > 0
    assert metadata.metrics["place_turns"] == 0.0  # a frame that is not square is not turned
    assert metadata.metrics["place_centres"] == 0.0
    printed = capsys.readouterr().out
    assert 0 <= printed.index("patch density: ") < printed.index("epoch 1/")  # before training
    x = torch.rand(2, 1, 40, 56)
    assert module.anomaly_map(x).shape == (2, 1, 40, 56)
    assert metadata.latent_dim == 8 * 10 * 14
