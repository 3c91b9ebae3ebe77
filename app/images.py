"""Images in and out: uploads to model tensors, model tensors to PNG.

Input policy (every step taken is reported per image in the response's `conversions`):

- Formats: PNG, JPEG, GIF, BMP, WebP, TIFF. Others are refused, so that no upload
  reaches a Pillow plugin that shells out (EPS) or is rarely exercised. An animated
  image contributes its first frame.
- Size: the header's width x height is checked against `VAE_MAX_PIXELS` before any
  pixel is decoded (413 `image_too_large`): a decompression bomb never expands. A PNG
  text or ICC chunk that would inflate past Pillow's bound (1 MiB) is a 413 too. WebP
  is further limited to `WEBP_MAX_PIXELS`: Pillow's WebP decoder copies the decoded frame
  (4 bytes a pixel) while holding the interpreter lock, which stalls every other request
  (~15 ms at that size on a 2-core machine; ~100 ms at 4096 x 4096).
- Pixels: `app.preprocessing`, the very function training reads its images with:
  EXIF orientation applied, mode converted to the model's (`L` or `RGB`; transparency
  composited on black, 16-bit scaled to 8), bilinear resize to the model's width x
  height. 32-bit integer and float modes are refused (422 `unsupported_mode`).
- Values: uint8 x `Preprocessing.scale`, clamped to `Preprocessing.pixel_range`.

Output: model images become 8-bit PNG (compress level 1: encoding speed over bytes);
heat maps are drawn by `app.heatmaps`.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from app.artifact import ModelMetadata
from app.errors import (
    ImageTooLargeError,
    InvalidImageError,
    RequestTimeoutError,
    UnsupportedModeError,
)
from app.heatmaps import output_size, render
from app.preprocessing import SUPPORTED_MODES, to_size, to_tensor, to_upright

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
PNG_COMPRESS_LEVEL = 1
WEBP_MAX_PIXELS = 2**21  # 1920 x 1080 fits
_BASE64_PART = 1 << 18  # characters per b64decode call, which holds the interpreter lock


@dataclass(frozen=True)
class DecodedImages:
    tensor: torch.Tensor  # (N, C, H, W) float32 in the model's pixel range
    conversions: list[list[str]]  # per image: what was changed to fit the model
    # per image, when asked for: the upload upright in the model's mode, at its own size
    # (uint8 (H, W) or (H, W, 3)): what heat maps are drawn over
    originals: list[np.ndarray] | None = None


def decode_base64(text: str, where: str) -> bytes:
    """Strict base64 (a `data:image/...;base64,` prefix is allowed) -> bytes.

    Line breaks are dropped, as RFC 2045 has decoders do: `base64` without `-w0` wraps at
    76 characters. Anything else outside the alphabet is refused. Decoded in parts, so
    that a large image never holds the interpreter lock for long; padding may only end
    the text, as in one strict call.
    """
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if "\n" in text or "\r" in text:
        text = text.replace("\r", "").replace("\n", "")
    try:
        if text.find("=", 0, len(text) - 2) != -1:
            raise ValueError("padding before the end")
        parts = range(0, len(text), _BASE64_PART)
        return b"".join(base64.b64decode(text[i : i + _BASE64_PART], validate=True) for i in parts)
    except (binascii.Error, ValueError):
        raise InvalidImageError(
            f"{where}: not valid base64 (A-Z, a-z, 0-9, + and / with = padding; "
            "line breaks are allowed, spaces are not)"
        ) from None


def load_images(
    blobs: Sequence[str | bytes],
    metadata: ModelMetadata,
    *,
    max_pixels: int,
    deadline: float | None = None,
    names: Sequence[str] | None = None,
    keep_originals: bool = False,
) -> DecodedImages:
    """Decode and convert every upload (`str` = base64); errors name the image (`names[i]`).
    With `keep_originals`, each upload is also kept upright at its heat maps' size."""
    arrays, conversions, originals = [], [], []
    for index, blob in enumerate(blobs):
        if deadline is not None and time.monotonic() > deadline:
            raise RequestTimeoutError("the request's deadline passed while decoding its images")
        where = names[index] if names is not None else f"images[{index}]"
        data = decode_base64(blob, where) if isinstance(blob, str) else blob
        decoded = load_image(
            data, metadata, max_pixels=max_pixels, where=where, original=keep_originals
        )
        arrays.append(decoded.pixels)
        conversions.append(decoded.notes)
        originals.append(decoded.original)
    tensor = to_tensor(np.stack(arrays), metadata.preprocessing)
    kept = [o for o in originals if o is not None] if keep_originals else None
    return DecodedImages(tensor, conversions, kept)


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8 at the model's size
    notes: list[str]
    original: np.ndarray | None  # uint8 upright at its heat maps' size, when asked for


def load_image(
    data: bytes, metadata: ModelMetadata, *, max_pixels: int, where: str, original: bool = False
) -> DecodedImage:
    """One upload -> uint8 array (H, W) or (H, W, C) at the model's size, its notes, and
    with `original` the upload upright in the model's mode at its heat maps' size."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{where}: more than {max_pixels} pixels") from None
    except Exception as exc:
        _refuse_metadata_bomb(exc, where)
        raise InvalidImageError(f"{where}: not a {', '.join(FORMATS)} image") from None
    with image:
        limit = min(max_pixels, WEBP_MAX_PIXELS) if image.format == "WEBP" else max_pixels
        if image.width * image.height > limit:
            raise ImageTooLargeError(
                f"{where}: {image.width}x{image.height} is more than {limit} pixels"
                + (" (the limit for WebP)" if limit < max_pixels else "")
            )
        if image.mode not in SUPPORTED_MODES:
            raise UnsupportedModeError(
                f"{where}: mode {image.mode} is not supported; send 8-bit greyscale or RGB(A)"
            )
        try:  # Pillow's decoders raise many types on hostile input: all mean a bad image
            image.load()
            upright, notes = to_upright(image, metadata.preprocessing.color_mode)
            pixels, resized = to_size(upright, (metadata.width, metadata.height))
            kept = np.array(_for_heat_maps(upright), dtype=np.uint8) if original else None
            return DecodedImage(pixels, notes + resized, kept)
        except Exception as exc:
            _refuse_metadata_bomb(exc, where)
            raise InvalidImageError(f"{where}: the image data is corrupt or truncated") from None


def _for_heat_maps(upright: Image.Image) -> Image.Image:
    """The upload at the size its heat maps are drawn at: keeping a 4096x4096 original per
    image cost 1 GB for 32 of them, and the maps never use more than `output_size`."""
    size = output_size(upright.width, upright.height)
    return upright if size == upright.size else upright.resize(size, Image.Resampling.BILINEAR)


def _refuse_metadata_bomb(exc: Exception, where: str) -> None:
    """413 for PngImagePlugin's refusal of a text or ICC chunk that inflates past its bound
    (before the pixels: at open; after them: at load)."""
    if isinstance(exc, ValueError) and "MAX_TEXT" in str(exc):
        raise ImageTooLargeError(
            f"{where}: its metadata (PNG text or ICC profile) inflates to more than "
            f"{PngImagePlugin.MAX_TEXT_CHUNK} bytes"
        ) from None


def _png(pixels: np.ndarray) -> str:
    """uint8 (H, W) or (H, W, 3) -> base64 PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> uint8 (N, H, W) or (N, H, W, C)."""
    pixels = images.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
    pixels = pixels[:, 0] if pixels.shape[1] == 1 else pixels.permute(0, 2, 3, 1)
    return pixels.contiguous().numpy()


def images_to_base64_png(images: torch.Tensor) -> list[str]:
    """(N, C, H, W) in [0, 1] -> N base64 PNGs (greyscale for C = 1, RGB for C = 3)."""
    return [_png(pixels) for pixels in _to_uint8(images)]


def warm_up_codecs(metadata: ModelMetadata) -> DecodedImages:
    """Encode one image of the model's shape as PNG and decode it back, before the
    first request; returns the decoded image.

    Pillow registers its format plugins on first use, and numpy and PIL take other
    first-call paths: together ~5 ms that the first request after ready paid alone.
    """
    mid_grey = torch.full((1, *metadata.image_shape), 0.5)
    png = images_to_base64_png(mid_grey)
    decoded = load_images(
        png, metadata, max_pixels=metadata.height * metadata.width, keep_originals=True
    )
    assert decoded.originals is not None
    render(mid_grey[:, :1], decoded.originals, 0.5 if metadata.calibrated_map else None)
    return decoded
