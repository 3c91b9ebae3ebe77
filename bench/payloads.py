"""The workloads and the request bodies a client of each endpoint sends (issue 3's wire format).

Every body is built once per run and sent unchanged, so the client spends nothing per
request on building it; the service caches nothing, so repeating a body costs it as much
as a new one.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import orjson
from PIL import Image

from app.artifact import ModelMetadata

ENDPOINTS = ("encode", "decode", "sample", "anomaly")


@dataclass(frozen=True)
class Workload:
    endpoint: str
    items: int  # images, latents or samples per request

    @property
    def path(self) -> str:
        return f"/{self.endpoint}"

    @property
    def label(self) -> str:
        return f"/{self.endpoint} x{self.items}"


def body(workload: Workload, metadata: ModelMetadata, seed: int = 0) -> bytes:
    """The JSON body of one request of `workload` for a model with `metadata`."""
    rng = np.random.default_rng(seed)
    n = workload.items
    if workload.endpoint == "encode":
        content: dict[str, object] = {"images": images(n, metadata, rng)}
    elif workload.endpoint == "anomaly":
        content = {"images": images(n, metadata, rng), "heatmap": False}
    elif workload.endpoint == "decode":
        latents = rng.standard_normal((n, metadata.latent_dim)).round(4)
        content = {"latents": latents.tolist(), "format": "png"}
    elif workload.endpoint == "sample":
        content = {"n": n, "format": "png"}  # no seed: every request draws new latents
    else:
        raise ValueError(f"unknown endpoint {workload.endpoint!r}")
    return orjson.dumps(content)


def images(n: int, metadata: ModelMetadata, rng: np.random.Generator) -> list[str]:
    """n different base64 PNGs at the model's size: sparse strokes (L) or smooth colour (RGB)."""
    return [_png(_pixels(metadata, rng)) for _ in range(n)]


def _pixels(metadata: ModelMetadata, rng: np.random.Generator) -> np.ndarray:
    height, width = metadata.height, metadata.width
    if metadata.channels == 1:
        return ((rng.random((height, width)) > 0.8) * 255).astype(np.uint8)  # (H, W)
    coarse = rng.integers(0, 256, (max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(smooth)  # (H, W, 3)


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
