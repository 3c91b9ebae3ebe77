"""What the service answers, as frozen dataclasses, and the functions that read the JSON into them.

Base64 PNGs are decoded to PNG bytes; `Images.pil()` opens them with Pillow, imported only then.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image as PILImage


@dataclass(frozen=True, slots=True)
class Encoding:
    """Per image: the posterior's mean and log-variance, and a sampled `z` when asked."""

    mu: list[list[float]]
    logvar: list[list[float]]
    z: list[list[float]] | None = None
    seed: int | None = None  # the seed z was drawn with: send it again to get the same z
    conversions: list[list[str]] = field(default_factory=list)  # per image: what was changed


@dataclass(frozen=True, slots=True)
class Images:
    """Images from /decode, /sample or /interpolate, and the latents they came from."""

    images: list[bytes] = field(default_factory=list)  # PNG files, for format="png"
    arrays: list[list[list[list[float]]]] | None = None  # [C][H][W] in [0, 1], format="array"
    latents: list[list[float]] | None = None  # None for /decode: the caller sent them
    seed: int | None = None  # /sample's seed, the request's or a drawn one

    def pil(self) -> list[PILImage.Image]:
        from PIL import Image

        return [Image.open(io.BytesIO(png)) for png in self.images]


@dataclass(frozen=True, slots=True)
class AnomalyResult:
    """One image's anomaly score (nats) against the model's calibrated threshold."""

    score: float
    threshold: float
    is_anomaly: bool
    percentile: float
    heatmap: bytes | None = None  # greyscale PNG at the upload's size, when asked for
    conversions: list[str] = field(default_factory=list)  # what was changed to fit the model
    overlay: bytes | None = None  # RGB PNG: the heat map's colours over the upload
    heatmap_scale: str | None = None  # "absolute" (the score's scale) or "relative"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The served model at a glance; `metadata` holds the whole /model answer."""

    name: str
    latent_dim: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    likelihood: str
    device: str
    metadata: dict[str, Any]


def parse_encoding(body: dict[str, Any]) -> Encoding:
    return Encoding(
        mu=body["mu"],
        logvar=body["logvar"],
        z=body.get("z"),
        seed=body.get("seed"),
        conversions=body.get("conversions") or [],
    )


def parse_images(body: dict[str, Any]) -> Images:
    pngs = [base64.b64decode(image) for image in body.get("images") or []]
    return Images(
        images=pngs, arrays=body.get("arrays"), latents=body.get("latents"), seed=body.get("seed")
    )


def parse_anomaly(body: dict[str, Any]) -> list[AnomalyResult]:
    return [
        AnomalyResult(
            score=r["score"],
            threshold=r["threshold"],
            is_anomaly=r["is_anomaly"],
            percentile=r["percentile"],
            heatmap=base64.b64decode(r["heatmap"]) if r.get("heatmap") else None,
            conversions=r.get("conversions") or [],
            overlay=base64.b64decode(r["overlay"]) if r.get("overlay") else None,
            heatmap_scale=r.get("heatmap_scale"),
        )
        for r in body["results"]
    ]


def parse_model_info(body: dict[str, Any]) -> ModelInfo:
    image = body["image"]
    return ModelInfo(
        name=body["name"],
        latent_dim=body["latent_dim"],
        image_shape=(image["channels"], image["height"], image["width"]),
        likelihood=body["likelihood"],
        device=body["device"],
        metadata=body,
    )
