"""The image policy: decoding, conversions, limits, and PNG output."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from app.artifact import ModelMetadata
from app.errors import (
    ImageTooLargeError,
    InvalidImageError,
    RequestTimeoutError,
    UnsupportedModeError,
)
from app.images import (
    WEBP_MAX_PIXELS,
    decode_base64,
    images_to_base64_png,
    load_image,
    load_images,
    warm_up_codecs,
)

LIMIT = 4096 * 4096


@pytest.fixture(scope="module")
def metadata(artifact_dir) -> ModelMetadata:
    return ModelMetadata.model_validate_json((artifact_dir / "model.json").read_text())


def load(data: bytes, metadata: ModelMetadata, max_pixels: int = LIMIT):
    decoded = load_image(data, metadata, max_pixels=max_pixels, where="images[0]")
    return decoded.pixels, decoded.notes


def test_greyscale_png_of_the_model_size_is_unchanged(metadata, encode_file):
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    array, notes = load(encode_file(pixels), metadata)
    assert notes == [] and np.array_equal(array, pixels)


def test_batch_tensor_is_scaled_to_the_unit_range(metadata, encode_file):
    white, black = (encode_file(np.full((28, 28), v, dtype=np.uint8)) for v in (255, 0))
    decoded = load_images([white, black], metadata, max_pixels=LIMIT)
    assert decoded.tensor.shape == (2, 1, 28, 28) and decoded.tensor.dtype == torch.float32
    assert decoded.tensor[0].min() == 1.0 and decoded.tensor[1].max() == 0.0


def test_rgb_jpeg_is_converted_and_resized(metadata, encode_file):
    rgb = np.full((64, 48, 3), 200, dtype=np.uint8)
    array, notes = load(encode_file(rgb, fmt="JPEG"), metadata)
    assert array.shape == (28, 28)
    assert notes == ["mode RGB->L", "resized 48x64->28x28"]


def test_transparent_pixels_become_black(metadata, encode_file):
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the top half opaque
    rgba[:14, :, 3] = 255
    array, notes = load(encode_file(rgba), metadata)
    assert notes == ["alpha composited on black", "mode RGBA->L"]
    assert array[:14].min() == 255 and array[14:].max() == 0


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(metadata, encode_file):
    pixels = np.full((28, 28), 65535, dtype=np.uint16)
    array, notes = load(encode_file(pixels), metadata)
    assert array.max() == 255 and notes[0].startswith("mode I;16")


def test_palette_and_bilevel_images_are_accepted(metadata):
    for mode in ("P", "1"):
        buffer = io.BytesIO()
        Image.new(mode, (28, 28), 1).save(buffer, format="PNG")
        _, notes = load(buffer.getvalue(), metadata)
        assert notes == [f"mode {mode}->L"]


def test_float_mode_is_unsupported(metadata, encode_file):
    data = encode_file(np.ones((28, 28), dtype=np.float32), fmt="TIFF")
    with pytest.raises(UnsupportedModeError, match=r"images\[0\]: mode F"):
        load(data, metadata)


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"%!PS-Adobe-3.0 EPSF"]
)
def test_non_images_are_invalid(metadata, data):
    with pytest.raises(InvalidImageError):
        load(data, metadata)


def test_truncated_png_is_invalid(metadata, digit_png):
    data = digit_png(1, size=64)
    with pytest.raises(InvalidImageError, match="corrupt or truncated"):
        load(data[: len(data) // 2], metadata)


def test_pixel_limit_is_checked_before_decoding(metadata, encode_file):
    huge = encode_file(np.zeros((100, 100), dtype=np.uint8))
    with pytest.raises(ImageTooLargeError, match="100x100"):
        load(huge, metadata, max_pixels=100 * 100 - 1)
    load(huge, metadata, max_pixels=100 * 100)


def test_pillow_decompression_bomb_is_too_large(metadata):
    """Past Pillow's own limit its guard fires first; it must still be a 413, not a 500."""
    buffer = io.BytesIO()
    Image.new("1", (20_000, 10_000)).save(buffer, format="PNG")  # 2e8 pixels, ~30 KB
    with pytest.raises(ImageTooLargeError):
        load(buffer.getvalue(), metadata)


def test_deadline_stops_decoding(metadata, digit_png):
    with pytest.raises(RequestTimeoutError):
        load_images([digit_png(1)], metadata, max_pixels=LIMIT, deadline=time.monotonic() - 1)


def test_base64_is_strict_and_accepts_data_urls():
    assert decode_base64("aGk=", "x") == b"hi"
    assert decode_base64("data:image/png;base64,aGk=", "x") == b"hi"
    with pytest.raises(InvalidImageError, match="images\\[2\\]: not valid base64"):
        decode_base64("aGk=!!", "images[2]")


def test_long_base64_decodes_in_parts_like_one_strict_call():
    data = np.random.default_rng(0).integers(0, 256, 3 * 2**19 + 2, dtype=np.uint8).tobytes()
    text = base64.b64encode(data).decode()
    assert decode_base64(text, "x") == data
    for broken in (
        text[:1000] + "==" + text[1000:],
        text[:-1],
        text[:500_000] + "*" + text[500_001:],
    ):
        with pytest.raises(InvalidImageError):
            decode_base64(broken, "x")


def test_webp_has_its_own_smaller_pixel_limit(metadata):
    """Pillow's WebP decoder holds the interpreter lock while it copies the frame."""
    side = int(WEBP_MAX_PIXELS**0.5) + 1
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="WEBP", lossless=True)
    with pytest.raises(ImageTooLargeError, match="the limit for WebP"):
        load(buffer.getvalue(), metadata)
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    assert load(buffer.getvalue(), metadata)[0].shape == (28, 28)


def test_png_output_round_trips(metadata):
    images = torch.rand(3, 1, 28, 28)
    encoded = images_to_base64_png(images)
    decoded = [np.array(Image.open(io.BytesIO(base64.b64decode(s)))) for s in encoded]
    assert np.abs(np.stack(decoded) / 255.0 - images[:, 0].numpy()).max() <= 0.5 / 255 + 1e-6


def test_rgb_output_is_an_rgb_png():
    (encoded,) = images_to_base64_png(torch.rand(1, 3, 8, 8))
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).mode == "RGB"


def test_codec_warm_up_round_trips_an_image_of_the_models_shape(metadata):
    rgb = ModelMetadata.model_validate(
        metadata.model_dump()
        | {"channels": 3, "height": 64, "width": 48}
        | {"preprocessing": metadata.preprocessing.model_dump() | {"color_mode": "RGB"}}
    )
    for each in (metadata, rgb):
        decoded = warm_up_codecs(each).tensor
        assert decoded.shape == (1, *each.image_shape)
        assert torch.allclose(decoded, torch.full_like(decoded, 128 / 255))  # 0.5 -> 128
