"""The model artifact: the one contract between `training/` (writer) and `app/` (reader).

An artifact is a folder holding exactly two files::

    model.pt     TorchScript module; every tensor float32, images in [0, 1]
        encode(x: [N, C, H, W]) -> (mu: [N, D], logvar: [N, D])
        decode(z: [N, D]) -> x_mean: [N, C, H, W]        mean of p(x|z), in [0, 1]
        elbo(x: [N, C, H, W], samples: int) -> [N]       negative ELBO, nats per image
        iwae(x: [N, C, H, W], samples: int) -> [N]       importance-weighted bound on -log p(x)
        score(x: [N, C, H, W]) -> [N]                    anomaly score, nats, deterministic
        pixel_nll(x: [N, C, H, W]) -> [N, C, H, W]       -log p(x|z=mu) per pixel (heat map)
        prior_latents(u: [N], eps: [N, D]) -> z: [N, D]  optional: the sampling prior
    model.json   `ModelMetadata` below, as JSON; written last, by rename, with the
                 sha256 of model.pt, so a reader never mistakes a half-copied folder
                 for an artifact (`app.layout`)

`prior_latents` maps the caller's noise to latents of the sampling prior (see
`SamplingPrior`): u uniform in [0, 1) picks a mixture component, eps ~ N(0, I) times
the temperature places the latent in it. It is deterministic, so a seeded `/sample`
gives the same images in any batch; an artifact without it samples N(0, I) (z = eps).

`score` is the exact function the calibration quantiles were computed with, so a
served score is comparable with `metadata.calibration`. Its noise is frozen inside
the module: the same image always gets the same score, whatever batch it runs in.

TorchScript appears in exactly two functions here, `save_artifact` and
`load_artifact`, so moving to another serialisation touches only this module.
The format version changes whenever a reader of the old version would misread
the new one; `load_artifact` refuses any other version.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
METADATA_FILE = "model.json"
METHODS = ("encode", "decode", "elbo", "iwae", "score", "pixel_nll")
MAP_METHOD = "anomaly_map"  # required when calibration.score is "map"
OPTIONAL_METHODS = ("prior_latents",)  # artifacts written before it lack it


class ArtifactError(Exception):
    """The artifact is missing, unreadable or of another format; the message is one line."""


class Preprocessing(BaseModel):
    """How a caller's image becomes the model's input tensor; `app.preprocessing` applies
    it, for training and serving alike."""

    model_config = ConfigDict(extra="forbid")

    color_mode: Literal["L", "RGB"] = Field(description="Pillow mode images are converted to")
    resize: Literal["bilinear"] = "bilinear"
    pixel_range: tuple[float, float] = (0.0, 1.0)
    scale: float = Field(1.0 / 255.0, description="uint8 pixel * scale = model input")


class Calibration(BaseModel):
    """Distribution of `score` on held-out normal data, and the anomaly threshold.

    `split-conformal` (written since the calibration split exists): the threshold is
    the ceil((count + 1)(1 - false_alarm_rate))-th smallest of `count` scores of images
    that neither training nor checkpoint selection saw, so a new normal image scores
    above it with probability at most `false_alarm_rate`. The rate a user will actually
    see depends on which images were drawn: `expected_false_alarm_rate` is its mean over
    calibration sets and `false_alarm_interval` holds it for a share
    `false_alarm_interval_level` of them. `quantile` (older artifacts): the threshold is
    the `threshold_level` quantile of validation scores, with none of those promises.
    """

    model_config = ConfigDict(extra="forbid")

    score: Literal["nelbo", "iwae", "recon", "nelbo-ic", "iwae-ic", "recon-ic", "map"]
    score_samples: int = Field(ge=1)
    count: int = Field(ge=1, description="images the quantiles were computed from")
    levels: list[float] = Field(description="quantile levels in [0, 1], increasing")
    quantiles: list[float] = Field(description="score at each level, non-decreasing")
    threshold_level: float = Field(gt=0.0, lt=1.0, description="1 - the requested rate")
    threshold: float
    method: Literal["split-conformal", "quantile"] = "quantile"
    false_alarm_rate: float | None = Field(
        None, gt=0.0, lt=1.0, description="the requested share of normal images flagged"
    )
    expected_false_alarm_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="mean rate on new normal data, over calibration sets"
    )
    false_alarm_interval: tuple[float, float] | None = Field(
        None, description="the rate on new normal data lies here for most calibration sets"
    )
    false_alarm_interval_level: float | None = Field(
        None, gt=0.0, lt=1.0, description="the share of calibration sets the interval holds for"
    )

    def percentile(self, score: float) -> float:
        """Position of `score` within the calibration scores, in [0, 100]."""
        if not math.isfinite(score):
            return 100.0 if score > 0 else 0.0
        qs, ls = self.quantiles, self.levels
        if score <= qs[0]:
            return 100.0 * ls[0]
        for i in range(1, len(qs)):
            if score <= qs[i]:
                span = qs[i] - qs[i - 1]
                frac = 0.0 if span <= 0 else (score - qs[i - 1]) / span
                return 100.0 * (ls[i - 1] + frac * (ls[i] - ls[i - 1]))
        return 100.0 * ls[-1]


class SamplingPrior(BaseModel):
    """Where `/sample` draws latents from: the training prior N(0, I), or a Gaussian
    mixture fitted after training to where the training images encode."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["standard-normal", "gaussian-mixture"]
    components: int = Field(default=0, ge=0, description="mixture components (0: N(0, I))")


STANDARD_NORMAL = SamplingPrior(kind="standard-normal")


class ModelMetadata(BaseModel):
    """Everything a reader needs besides the weights; written as `model.json`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int
    name: str
    channels: int = Field(ge=1, le=3)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    latent_dim: int = Field(ge=1)
    likelihood: Literal["bernoulli", "gaussian"]
    architecture: str
    preprocessing: Preprocessing
    calibration: Calibration
    sampling_prior: SamplingPrior = Field(
        default=STANDARD_NORMAL, description="absent from artifacts written before it: N(0, I)"
    )
    metrics: dict[str, float]
    training: dict[str, Any] = Field(description="the full training configuration")
    data_fingerprint: str = Field(description="sha256 of the training images and labels")
    torch_version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model_sha256: str | None = Field(
        default=None, description="sha256 of model.pt, written by save_artifact; checked on load"
    )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def calibrated_map(self) -> bool:
        """Whether the heat map (`anomaly_map`) is on the score's scale, threshold included."""
        return self.calibration.score == "map"


def save_artifact(module: torch.nn.Module, metadata: ModelMetadata, directory: Path) -> Path:
    """Script `module`, write `model.pt` and `model.json` into `directory`."""
    if metadata.format_version != FORMAT_VERSION:
        raise ArtifactError(f"metadata has format_version {metadata.format_version}")
    directory.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(module.eval())
    missing = [m for m in METHODS if not hasattr(scripted, m)]
    if missing:
        raise ArtifactError(f"module lacks the artifact methods {missing}")
    scripted.save(str(directory / MODEL_FILE))
    metadata = metadata.model_copy(update={"model_sha256": file_sha256(directory / MODEL_FILE)})
    partial = directory / f".{METADATA_FILE}.partial"
    partial.write_text(metadata.model_dump_json(indent=2) + "\n")
    partial.replace(directory / METADATA_FILE)
    return directory


def read_metadata(directory: Path) -> ModelMetadata:
    """Parse and check `model.json`; raise `ArtifactError` with a one-line reason."""
    path = directory / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(f"no {METADATA_FILE} in {directory}")
    try:
        raw = path.read_text()
        version = ModelMetadata.model_validate_json(raw, strict=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{path}: invalid metadata at '{where}': {first['msg']}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable: {exc}") from None
    if version.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {version.format_version}, this service reads {FORMAT_VERSION}"
        )
    return version


def load_artifact(
    directory: Path, device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """Load the TorchScript module and its metadata onto `device`, in eval mode."""
    metadata = read_metadata(directory)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"no {MODEL_FILE} in {directory}")
    if metadata.model_sha256 is not None and file_sha256(path) != metadata.model_sha256:
        raise ArtifactError(f"{path}: does not match model_sha256 in {METADATA_FILE}")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # TorchScript raises RuntimeError and friends for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: not a loadable TorchScript file ({reason})") from None
    required = (*METHODS, MAP_METHOD) if metadata.calibrated_map else METHODS
    missing = [m for m in required if not hasattr(module, m)]
    if missing:
        raise ArtifactError(f"{path}: lacks the artifact methods {missing}")
    return module.eval(), metadata


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, as `model_sha256` states it."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ArtifactError(f"{path}: unreadable: {exc}") from None
