"""The one path from a decoded image to the model's input: training and serving both call it.

    to_pixels(image, color_mode, size)   PIL image -> uint8 (H, W) or (H, W, C), and notes
    to_upright(image, color_mode)        the same before the resize (heat maps go over it)
    to_tensor(pixels, preprocessing)     uint8 (N, H, W[, C]) -> float32 (N, C, H, W)

`to_pixels` takes, in this order:

- Orientation: the EXIF Orientation tag is applied (`ImageOps.exif_transpose`), so a
  phone photo stored sideways is seen upright.
- Mode: converted to `L` or `RGB` with Pillow (`L` is ITU-R 601-2 luma). Transparent
  pixels are composited onto black, the background of MNIST-style data (0 = no ink);
  16-bit greyscale keeps its high byte. 32-bit integer and float modes have no agreed
  scale and are refused (`UnsupportedModeError`); check `SUPPORTED_MODES` first.
- Size: resized to `size` = (width, height) with Pillow's bilinear filter, which
  antialiases when shrinking; aspect ratio is not kept. The caller picks the size: the
  model's, or another (a working resolution for tiles).

`to_tensor` computes uint8 x `Preprocessing.scale` in float64 and rounds once to float32,
so 255 x (1/255) is exactly 1.0 and every pixel value maps to the float nearest its
quotient by 255, whichever side computes it.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from app.artifact import Preprocessing

ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
SUPPORTED_MODES = frozenset(
    {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", *ALPHA_MODES, *SIXTEEN_BIT_MODES}
)
GREY_MODES = frozenset({"1", "L", "LA", "La", *SIXTEEN_BIT_MODES})


class UnsupportedModeError(ValueError):
    """The image's Pillow mode has no agreed conversion to 8-bit pixels."""


def preprocessing_for(channels: int) -> Preprocessing:
    """The preprocessing of a model with `channels` (1: `L`, 3: `RGB`), pixels / 255."""
    return Preprocessing(
        color_mode="L" if channels == 1 else "RGB",
        resize="bilinear",
        pixel_range=(0.0, 1.0),
        scale=1.0 / 255.0,
    )


def to_pixels(
    image: Image.Image, color_mode: str, size: tuple[int, int]
) -> tuple[np.ndarray, list[str]]:
    """A decoded image -> uint8 (H, W) for `L` or (H, W, 3) for `RGB` at `size` (width,
    height), and what was changed to get there."""
    upright, notes = to_upright(image, color_mode)
    pixels, resized = to_size(upright, size)
    return pixels, notes + resized


def to_size(upright: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """The last step of `to_pixels`: an image from `to_upright` at `size` (width, height)."""
    resized, notes = _resize(upright, size)
    return np.array(resized, dtype=np.uint8), notes


def to_upright(image: Image.Image, color_mode: str) -> tuple[Image.Image, list[str]]:
    """Every step of `to_pixels` but the resize: the image as the model sees it, at the
    upload's own (upright) size. Heat maps are drawn over this."""
    if image.mode not in SUPPORTED_MODES:
        raise UnsupportedModeError(f"mode {image.mode} is not supported")
    notes = ["used the first frame"] if getattr(image, "is_animated", False) else []
    image, turned = _upright(image)
    converted, converted_notes = _to_mode(image, color_mode)
    return converted, notes + turned + converted_notes


def to_tensor(pixels: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in the model's range."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))
    tensor = tensor.unsqueeze(1) if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)
    low, high = preprocessing.pixel_range
    scaled = (tensor.to(torch.float64) * preprocessing.scale).to(torch.float32)
    return scaled.clamp_(low, high).contiguous()


def _upright(image: Image.Image) -> tuple[Image.Image, list[str]]:
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation not in range(2, 9):  # 1 is upright; other values name no transpose
        return image, []
    upright = ImageOps.exif_transpose(image)
    return upright, [f"turned upright (EXIF orientation {orientation})"]


def _to_mode(image: Image.Image, target: str) -> tuple[Image.Image, list[str]]:
    source = image.mode
    if source == target:
        return image, []
    notes = []
    if source in SIXTEEN_BIT_MODES:
        image = Image.fromarray((np.array(image, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    elif source in ALPHA_MODES or (source == "P" and "transparency" in image.info):
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image.convert("RGBA"))
        notes.append("alpha composited on black")
    notes.append(f"mode {source}->{target}")
    return image.convert(target), notes


def _resize(image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    if image.size == size:
        return image, []
    note = f"resized {image.width}x{image.height}->{size[0]}x{size[1]}"
    return image.resize(size, Image.Resampling.BILINEAR), [note]
