"""The one preprocessing path: orientation, modes, resize, and the exact uint8 -> float map."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from app.preprocessing import (
    UnsupportedModeError,
    preprocessing_for,
    to_pixels,
    to_tensor,
)


def stored_sideways(upright: np.ndarray, fmt: str = "PNG") -> Image.Image:
    """What a phone writes when held sideways: the sensor's pixels (the upright picture
    turned a quarter) and EXIF Orientation 6, "turn 90 degrees clockwise to view"."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.rot90(upright)).save(buffer, format=fmt, exif=exif)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_an_image_already_in_shape_is_unchanged() -> None:
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    array, notes = to_pixels(Image.fromarray(pixels), "L", (28, 28))
    assert notes == [] and np.array_equal(array, pixels) and array.flags.writeable


def test_exif_orientation_turns_the_image_upright() -> None:
    upright = np.zeros((20, 12), dtype=np.uint8)
    upright[:5, :] = 255  # a bar across the top
    array, notes = to_pixels(stored_sideways(upright), "L", (12, 20))
    assert np.array_equal(array, upright)
    assert notes == ["turned upright (EXIF orientation 6)"]


def test_resize_takes_width_then_height() -> None:
    array, notes = to_pixels(Image.new("RGB", (64, 48), (10, 20, 30)), "RGB", (40, 30))
    assert array.shape == (30, 40, 3) and (array == (10, 20, 30)).all()
    assert notes == ["resized 64x48->40x30"]


def test_mode_rules_alpha_and_sixteen_bit() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[:2, :, 3] = 255  # only the top half opaque
    array, notes = to_pixels(Image.fromarray(rgba), "L", (4, 4))
    assert notes == ["alpha composited on black", "mode RGBA->L"]
    assert array[:2].min() == 255 and array[2:].max() == 0
    deep = Image.fromarray(np.full((4, 4), 0x8000, dtype=np.uint16))
    array, _ = to_pixels(deep, "L", (4, 4))
    assert (array == 0x80).all()


def test_float_and_32_bit_modes_are_refused() -> None:
    for image in (Image.new("F", (4, 4)), Image.new("I", (4, 4))):
        with pytest.raises(UnsupportedModeError, match=f"mode {image.mode}"):
            to_pixels(image, "L", (4, 4))


def test_to_tensor_maps_every_byte_to_its_nearest_float() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    tensor = to_tensor(pixels, preprocessing_for(1))
    assert tensor.shape == (1, 1, 16, 16) and tensor.dtype == torch.float32
    expected = torch.from_numpy(np.arange(256) / 255.0).float().view(1, 1, 16, 16)
    assert torch.equal(tensor, expected)  # bit for bit: one rounding, from float64
    assert tensor.max() == 1.0


def test_to_tensor_puts_channels_first() -> None:
    pixels = np.zeros((2, 3, 5, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    tensor = to_tensor(pixels, preprocessing_for(3))
    assert tensor.shape == (2, 3, 3, 5) and tensor.is_contiguous()
    assert tensor[:, 2].min() == 1.0 and tensor[:, :2].max() == 0.0
