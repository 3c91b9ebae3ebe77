"""The training recipe: every knob of `python -m training`, with the shipped defaults.

`TrainConfig`'s field defaults ARE the default MNIST model recipe; the CLI reads its
defaults from here, so changing the recipe is a one-line edit in this file. The
config is stored in checkpoints and in `model.json` (`training`), which makes every
artifact reproducible from its own metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_args

from training.errors import ConfigError
from training.model import Architecture, Likelihood, ModelConfig, ScoreKind

IMAGE_SIZE_RANGE = (28, 128)
# spatial models work at the data's resolution: its long side, within these bounds
WORK_SIZE_RANGE = (32, 1024)
DEFAULT_WORK_SIDE = 512  # image_size 0 (the data's own) is capped here: serving cost


@dataclass(frozen=True)
class TrainConfig:
    """One training run, from data to artifact."""

    # data
    data: str = "mnist"  # 'mnist', a folder of PNG/JPEG images, or a .npz file
    classes: tuple[int, ...] | None = None  # keep only these labels
    image_size: int = 28  # every image is resized to image_size x image_size
    # (spatial: the long side of the working resolution; 0 = the data's own, at most 512)
    channels: int | None = None  # None: the source's own (1 unless it holds colour)
    val_fraction: float = 0.1  # picks the best checkpoint
    calibration_fraction: float = 0.1  # sets the anomaly threshold; nothing else sees it
    seed: int = 0
    # model
    architecture: Architecture = "conv"
    latent_dim: int = 32
    hidden: tuple[int, ...] = (32, 64, 64)  # 28 -> 14 -> 7 -> 4: small dense layers
    dense: int = 512
    likelihood: Likelihood = "bernoulli"
    # spatial models (the inspection preset): crops they train on, their map head
    crop: int = 64
    crops_per_image: int = 2
    map_hidden: tuple[int, ...] = (16, 32, 64)
    map_sigma: float | None = None  # None: chosen on validation images with synthetic defects
    preset: str | None = None  # the recipe the flags started from (`training.presets`)
    # Gaussian likelihood: sigma never below this (pixels in [0, 1]). A learned sigma
    # that shrinks to ~0.003 makes the reconstruction outweigh the KL a thousandfold and
    # drives the posteriors far from the prior; above 0.135 (its start) sigma is fixed.
    min_sigma: float = 0.05
    # sampling prior: a Gaussian mixture fitted to the training latents (0: N(0, I))
    prior_components: int = 10
    # loss: the cures for KL vanishing
    beta: float = 1.0
    warmup_epochs: float = 10.0
    free_bits: float = 0.0
    # optimisation
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    augment_shift: int = 1  # 2 px shifts centred digits too far: worse validation ELBO
    max_minutes: float | None = None
    device: str = "auto"
    dist_timeout_minutes: float = 10.0  # torchrun: NCCL's default wait at a collective
    threads: int | None = None  # CPU threads; None: torch's default, one per core
    resume: str | None = None
    # outputs
    name: str | None = None  # default: 'mnist', or the data path's stem
    checkpoint_dir: str | None = None  # default: runs/<name>
    out: str | None = None  # default: models/<name>
    # anomaly score, calibration, evaluation
    score: ScoreKind = "nelbo-ic"  # best in the one-class protocol (README)
    score_samples: int = 1  # frozen draws; 16 gave the same AUROC at 16x the cost
    false_alarm_rate: float = 0.01  # share of new normal images flagged; split conformal
    iwae_samples: int = 256

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return "mnist" if self.data == "mnist" else Path(self.data).stem or "model"

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir or Path("runs") / self.run_name)

    @property
    def artifact_path(self) -> Path:
        return Path(self.out or Path("models") / self.run_name)

    def model_config(self, channels: int, work_size: tuple[int, int] | None = None) -> ModelConfig:
        """The network this recipe builds; every field passed, so these defaults rule.
        A spatial model takes `work_size` (height, width) images; its `latent_dim` is the
        size of the whole latent map, `--latent-dim` channels per cell."""
        spatial = self.architecture == "spatial"
        latent_dim = self.latent_dim
        if spatial:
            if work_size is None:
                raise ConfigError("a spatial model needs the working size of its images")
            stride = 2 ** len(self.hidden)
            latent_dim *= (work_size[0] // stride) * (work_size[1] // stride)
        return ModelConfig(
            architecture=self.architecture,
            channels=channels,
            image_size=work_size[0] if spatial and work_size else self.image_size,
            latent_dim=latent_dim,
            hidden=self.hidden,
            dense=self.dense,
            likelihood=self.likelihood,
            score=self.score,
            score_samples=self.score_samples,
            score_seed=self.seed,
            work_size=work_size if spatial else None,
            latent_channels=self.latent_dim,
            crop=self.crop,
            crops_per_image=self.crops_per_image,
            map_hidden=self.map_hidden,
            map_sigma=self.map_sigma or 4.0,
            min_sigma=self.min_sigma,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "threshold_quantile" in raw and "false_alarm_rate" not in raw:  # before the rename
            values["false_alarm_rate"] = complement(raw["threshold_quantile"])
        for key in ("hidden", "classes", "map_hidden"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def validate(self) -> TrainConfig:
        """Raise `ConfigError` naming the first bad flag; return self for chaining."""
        self._validate_size()
        _require(self.channels in (None, 1, 3), "--channels must be 1 or 3")
        _require(0.0 < self.val_fraction < 1.0, "--val-fraction must be in (0, 1)")
        _require(
            0.0 < self.calibration_fraction < 1.0 - self.val_fraction,
            "--calibration-fraction must be in (0, 1 - --val-fraction)",
        )
        _require(self.classes is None or len(self.classes) > 0, "--classes is empty")
        for flag, choice, allowed in (
            ("--architecture", self.architecture, get_args(Architecture)),
            ("--likelihood", self.likelihood, get_args(Likelihood)),
            ("--score", self.score, get_args(ScoreKind)),
        ):
            _require(choice in allowed, f"{flag} must be one of {', '.join(allowed)}")
        _require(len(self.hidden) > 0 and min(self.hidden) > 0, "--hidden needs positive widths")
        for flag, value in self._positive_ints().items():
            _require(value >= 1, f"{flag} must be at least 1")
        _require(0.0 < self.min_sigma <= 1.0, "--min-sigma must be in (0, 1]")
        _require(self.prior_components >= 0, "--prior-components must not be negative")
        _require(self.lr > 0.0, "--lr must be positive")
        _require(self.beta >= 0.0, "--beta must not be negative")
        _require(self.warmup_epochs >= 0.0, "--warmup-epochs must not be negative")
        _require(self.free_bits >= 0.0, "--free-bits must not be negative")
        _require(
            0 <= self.augment_shift < self._side() // 2,
            "--augment-shift must be in [0, image size / 2)",
        )
        _require(0.0 < self.false_alarm_rate < 1.0, "--false-alarm-rate must be in (0, 1)")
        _require(self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be positive")
        _require(self.threads is None or self.threads >= 1, "--threads must be at least 1")
        _require(self.dist_timeout_minutes > 0, "--dist-timeout-minutes must be positive")
        return self

    def _side(self) -> int:
        """The side of what one training step sees: the image, or a spatial model's crop."""
        return self.crop if self.architecture == "spatial" else self.image_size

    def _validate_size(self) -> None:
        if self.architecture != "spatial":
            low, high = IMAGE_SIZE_RANGE
            _require(
                low <= self.image_size <= high,
                f"--image-size must be in [{low}, {high}], got {self.image_size}",
            )
            _require(self.score != "map", "--score map needs --architecture spatial")
            return
        low, high = WORK_SIZE_RANGE
        stride = 2 ** len(self.hidden)
        _require(
            self.image_size == 0 or low <= self.image_size <= high,
            f"--image-size must be 0 (the data's own) or in [{low}, {high}] for a spatial "
            f"model, got {self.image_size}",
        )
        _require(self.score == "map", "a spatial model scores with --score map")
        _require(
            self.crop >= 2 * stride and self.crop % stride == 0,
            f"--crop must be a multiple of {stride} (2 ** levels of --hidden), at least "
            f"{2 * stride}, got {self.crop}",
        )
        _require(self.crops_per_image >= 1, "--crops-per-image must be at least 1")
        _require(
            len(self.map_hidden) > 0 and all(w >= 4 and w % 4 == 0 for w in self.map_hidden),
            "--map-hidden needs widths that are positive multiples of 4",
        )
        _require(
            self.map_sigma is None or 0.0 < self.map_sigma <= 64.0,
            "--map-sigma must be in (0, 64] pixels",
        )

    def _positive_ints(self) -> dict[str, int]:
        return {
            "--latent-dim": self.latent_dim,
            "--dense": self.dense,
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--score-samples": self.score_samples,
            "--iwae-samples": self.iwae_samples,
        }


def complement(quantile: float) -> float:
    """A threshold's quantile level -> the false-alarm rate it leaves: 0.99 -> 0.01 (not
    0.010000000000000009)."""
    return round(1.0 - quantile, 12)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
