"""Heat maps people can read: the raw map and an overlay on the upload, at the upload's size.

The runtime returns one map per image at the model's size, (N, 1, H, W). Two scales:

- ``absolute``: a model with an `anomaly_map` (the inspection models). Its values lie in
  [0, 1] on the score's own scale (the image's score is the map's peak), so they compare
  across images. Raw map: grey = value (black 0, white 1). Overlay: the colour scale runs
  from transparent (0) through purple and red to yellow at the calibrated threshold and
  above: a yellow pixel carries as much evidence as the peak of a flagged image.
- ``relative``: any other model: the channel-summed -log p(x|z=mu) per pixel, min-max
  scaled within each image (white and yellow = the least likely pixels of that image), so
  it compares regions within one image, not images with each other.

Both are resized (bilinear) to the upload's upright size, at most `MAX_SIDE` on the long
side, and the overlay is drawn over the upload's own pixels there.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

MAX_SIDE = 2048  # a heat map larger than this only makes the answer heavier, not clearer
OVERLAY_OPACITY = 0.75  # at full strength the input still shows through
PNG_COMPRESS_LEVEL = 1
# anchors of the overlay's colour scale (inferno-like: dark to bright, readable in grey)
ANCHORS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


@dataclass(frozen=True)
class HeatMap:
    raw: str  # base64 greyscale PNG
    overlay: str  # base64 RGB PNG
    scale: str  # "absolute" or "relative"


def colour_scale(levels: int = 256) -> np.ndarray:
    """The overlay's colours, (levels, 3) uint8, by linear steps between `ANCHORS`."""
    positions = np.linspace(0, len(ANCHORS) - 1, levels)
    low = np.floor(positions).astype(int).clip(0, len(ANCHORS) - 2)
    frac = (positions - low)[:, None]
    return np.round(ANCHORS[low] * (1 - frac) + ANCHORS[low + 1] * frac).astype(np.uint8)


COLOURS = colour_scale()


def output_size(width: int, height: int) -> tuple[int, int]:
    """The upload's (width, height), shrunk to `MAX_SIDE` on the long side if larger."""
    factor = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def render(
    maps: torch.Tensor, originals: list[np.ndarray], threshold: float | None
) -> list[HeatMap]:
    """Maps (N, 1, H, W) and the uploads upright (uint8 (h, w[, 3])) -> one `HeatMap` each.
    `threshold` given: the absolute scale; None: relative, per image."""
    return [_one(m, original, threshold) for m, original in zip(maps, originals, strict=True)]


def _one(heat: torch.Tensor, original: np.ndarray, threshold: float | None) -> HeatMap:
    width, height = output_size(original.shape[1], original.shape[0])
    resized = F.interpolate(heat[None].float(), size=(height, width), mode="bilinear")[0, 0]
    if threshold is None:
        low, high = float(resized.min()), float(resized.max())
        value = (resized - low) / (high - low) if high > low else torch.zeros_like(resized)
        strength = value
    else:
        value = resized.clamp(0.0, 1.0)
        strength = (resized / max(threshold, 1e-6)).clamp(0.0, 1.0)
    grey = (value * 255.0).round().to(torch.uint8).numpy()
    base = _rgb(original, (width, height))
    return HeatMap(_png(grey), _png(_overlay(base, strength.numpy())), _scale_name(threshold))


def _rgb(original: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(original).convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _overlay(base: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """`base` (h, w, 3) with the colour of `strength` (h, w) in [0, 1] laid over it."""
    colours = COLOURS[np.round(strength * 255).astype(np.int64)].astype(np.float32)
    alpha = (OVERLAY_OPACITY * strength)[:, :, None]
    return np.round(base * (1 - alpha) + colours * alpha).astype(np.uint8)


def _scale_name(threshold: float | None) -> str:
    return "relative" if threshold is None else "absolute"


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
