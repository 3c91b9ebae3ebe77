"""The wire format: every request and response body, with examples for `/docs`.

Naming ladder: `<Verb>Request` (JSON body), `<Verb>Form` (the same options as a
multipart form, images as the repeatable file field `files`), `<Verb>Response`. The
names and fields of issue 3 are the contract: extend, never rename. Request models
forbid unknown fields, so a misspelt option fails loudly instead of being ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.artifact import Calibration, Preprocessing
from app.latents import SEED_MAX

EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAHElEQVR42mNgGGSAEYX3H1WACZ/OUckRJDkQ"
    "AADJ8AEmaOIFkQAAAABJRU5ErkJggg=="
)  # a 28x28 greyscale "1"
LATENT_LIMIT = 1e4  # |z| beyond this is far outside any prior; float32 stays finite inside it

Base64Image = Annotated[
    str, Field(description="base64 PNG/JPEG/...; a data: URL prefix is accepted")
]
Upload = Annotated[bytes, Field(description="an image file (PNG, JPEG, GIF, BMP, WebP, TIFF)")]
LatentValue = Annotated[
    float, Field(strict=True, allow_inf_nan=False, ge=-LATENT_LIMIT, le=LATENT_LIMIT)
]
LatentVector = Annotated[list[LatentValue], Field(min_length=1)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description="same seed, same numbers")]
ImageFormat = Annotated[
    Literal["png", "array"],
    Field(description="png: base64 PNG strings in `images`; array: [C][H][W] floats in `arrays`"),
]
Matrix = list[list[float]]
Arrays = list[list[list[list[float]]]]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- /encode ---------------------------------------------------------------------------
class EncodeOptions(RequestModel):
    sample: bool = Field(False, description="also draw z = mu + sigma * eps")
    seed: Seed | None = Field(None, description="seed for eps; drawn (and returned) if null")


class EncodeRequest(EncodeOptions):
    images: list[Base64Image] = Field(min_length=1)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"images": [EXAMPLE_PNG], "sample": True, "seed": 1}]}
    )


class EncodeForm(EncodeOptions):
    files: list[Upload] = Field(min_length=1)


class EncodeResponse(BaseModel):
    mu: Matrix = Field(description="posterior mean per image, (N, D)")
    logvar: Matrix = Field(description="posterior log-variance per image, (N, D)")
    z: Matrix | None = Field(description="a posterior sample per image when asked, else null")
    seed: int | None = Field(None, description="the seed z was drawn with")
    conversions: list[list[str]] = Field(description="per image: what was changed to fit")


# --- /decode ---------------------------------------------------------------------------
class DecodeRequest(RequestModel):
    latents: list[LatentVector] = Field(min_length=1, description="(N, D) latent vectors")
    format: ImageFormat = "png"

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"latents": [[0.0, 0.5, -1.0, 2.0]], "format": "png"}]}
    )


class ImagesOut(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNG per image (format png)")
    arrays: Arrays | None = Field(None, description="[C][H][W] floats in [0, 1] (format array)")


class DecodeResponse(ImagesOut):
    pass


# --- /sample ---------------------------------------------------------------------------
class SampleRequest(RequestModel):
    n: int = Field(1, ge=1, description="how many images; at most VAE_MAX_SAMPLES")
    seed: Seed | None = None
    temperature: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="scale on the prior's std (of each component, for a mixture prior)",
    )
    format: ImageFormat = "png"

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"n": 4, "seed": 1, "temperature": 1.0, "format": "png"}]}
    )


class SampleResponse(ImagesOut):
    latents: Matrix = Field(description="the latent vector of each image, (n, D)")
    seed: int = Field(description="the seed used (the request's, or a drawn one)")


# --- /interpolate ----------------------------------------------------------------------
class Endpoint(RequestModel):
    image: Base64Image | None = None
    latent: LatentVector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Endpoint:
        if (self.image is None) == (self.latent is None):
            raise ValueError("give exactly one of `image` and `latent`")
        return self


class InterpolateOptions(RequestModel):
    steps: int = Field(8, ge=2, description="points on the path, both ends included")
    method: Literal["linear", "slerp"] = "linear"
    format: ImageFormat = "png"


class InterpolateRequest(InterpolateOptions):
    start: Endpoint
    end: Endpoint

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "start": {"image": EXAMPLE_PNG},
                    "end": {"latent": [0.0, 0.5, -1.0, 2.0]},
                    "steps": 8,
                    "method": "slerp",
                }
            ]
        }
    )


class InterpolateForm(InterpolateOptions):
    files: list[Upload] = Field(min_length=2, max_length=2, description="start, then end")


class EndpointConversions(BaseModel):
    start: list[str]
    end: list[str]


class InterpolateResponse(ImagesOut):
    latents: Matrix = Field(description="the path in latent space, (steps, D)")
    conversions: EndpointConversions


# --- /anomaly --------------------------------------------------------------------------
class AnomalyOptions(RequestModel):
    heatmap: bool = Field(
        False, description="add a heat map and an overlay PNG per image, at the upload's size"
    )


class AnomalyRequest(AnomalyOptions):
    images: list[Base64Image] = Field(min_length=1)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"images": [EXAMPLE_PNG], "heatmap": True}]}
    )


class AnomalyForm(AnomalyOptions):
    files: list[Upload] = Field(min_length=1)


class AnomalyResult(BaseModel):
    score: float = Field(description="anomaly score in nats; the calibration's score")
    threshold: float = Field(description="scores above this are anomalous")
    is_anomaly: bool
    percentile: float = Field(description="position of score within calibration, 0-100")
    heatmap: str | None = Field(
        None,
        description="base64 greyscale PNG of the heat map at the upload's size (long side at "
        "most 2048); white = most anomalous; or null",
    )
    overlay: str | None = Field(
        None,
        description="base64 RGB PNG: the heat map's colours over the upload, same size; yellow "
        "at or above the threshold (absolute scale); or null",
    )
    heatmap_scale: Literal["absolute", "relative"] | None = Field(
        None,
        description="absolute: grey = the map value, on the score's scale (inspection models); "
        "relative: scaled within this image (other models)",
    )
    conversions: list[str] = Field(description="what was changed to fit the model")


class AnomalyResponse(BaseModel):
    results: list[AnomalyResult]


# --- probes, model, errors -------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"


class ImageShape(BaseModel):
    channels: int
    height: int
    width: int


class Limits(BaseModel):
    max_images: int
    max_pixels: int
    max_body_bytes: int
    max_samples: int
    max_steps: int
    max_batch_size: int
    latent_abs_max: float = LATENT_LIMIT


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    format_version: int
    architecture: str
    likelihood: str
    image: ImageShape
    latent_dim: int
    preprocessing: Preprocessing
    calibration: Calibration
    metrics: dict[str, float]
    training: dict[str, Any]
    data_fingerprint: str
    torch_version: str
    created_at: datetime
    device: str
    batch_invariant: bool = Field(
        description="a row's numbers never depend on the rows batched with it: checked at load"
    )
    limits: Limits


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable, e.g. invalid_image")
    message: str = Field(description="what went wrong and what to fix")
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- the model repository --------------------------------------------------------------
class VersionInfo(BaseModel):
    version: int
    state: Literal["loading", "ready", "unloading", "failed"]
    reason: str | None = Field(description="why the load failed; null otherwise")
    metadata: ModelInfo | None = Field(description="GET /model's body, once loaded")


class ModelEntry(BaseModel):
    name: str
    default: bool = Field(description="served by the top-level routes")
    state: Literal["ready", "unavailable"] = Field(description="ready: a version serves")
    versions: list[VersionInfo] = Field(description="every load in progress or in service")


class ModelsResponse(BaseModel):
    models: list[ModelEntry]
