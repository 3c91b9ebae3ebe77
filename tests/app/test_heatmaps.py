"""Heat maps at the upload's size: the raw map, the overlay, their scales, through /anomaly."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.artifact import read_metadata
from app.heatmaps import COLOURS, MAX_SIDE, output_size, render
from app.images import load_image

pytestmark = pytest.mark.anyio


def decode(png: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(png)))


def jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_the_output_size_is_the_uploads_up_to_the_cap():
    assert output_size(300, 200) == (300, 200)
    assert output_size(4 * MAX_SIDE, MAX_SIDE) == (MAX_SIDE, MAX_SIDE // 4)


def test_a_huge_upload_is_kept_only_at_its_maps_size_and_draws_the_same_maps(artifact_dir):
    """Keeping each upload at full size cost 1 GB for 32 blank 4096x4096 PNGs; its maps are
    drawn at `MAX_SIDE` at most, and shrinking first gives the same pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1500, 2 * MAX_SIDE + 100), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    metadata = read_metadata(artifact_dir)
    decoded = load_image(
        buffer.getvalue(), metadata, max_pixels=1 << 24, where="image 0", original=True
    )
    assert decoded.original is not None
    assert decoded.original.shape[:2] == output_size(pixels.shape[1], pixels.shape[0])[::-1]
    heat = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    full = np.array(Image.fromarray(pixels).convert(Image.open(buffer).mode))
    assert render(heat, [decoded.original], 0.5) == render(heat, [full], 0.5)


def test_an_absolute_map_keeps_its_values_and_saturates_the_overlay_at_the_threshold():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, :2] = 0.5  # the top half at the threshold, the bottom at zero
    original = np.full((8, 8), 100, dtype=np.uint8)
    (heat,) = render(maps, [original], threshold=0.5)
    raw = np.asarray(decode(heat.raw))
    overlay = np.asarray(decode(heat.overlay))
    assert heat.scale == "absolute" and raw.shape == (8, 8) and overlay.shape == (8, 8, 3)
    assert raw[0, 0] == 128 and raw[7, 7] == 0  # grey = value
    assert overlay[7, 7].tolist() == [100, 100, 100]  # no evidence: the input shows
    expected = np.round(100 * 0.25 + COLOURS[255].astype(np.float32) * 0.75)
    assert overlay[0, 0].tolist() == expected.astype(int).tolist()  # yellow at the threshold


def test_a_relative_map_is_scaled_within_its_image():
    maps = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]]])
    (heat,) = render(maps, [np.zeros((2, 2, 3), dtype=np.uint8)], threshold=None)
    raw = np.asarray(decode(heat.raw))
    assert heat.scale == "relative"
    assert raw[0, 0] == 0 and raw[1, 1] == 255


def test_a_relative_map_has_the_same_picture_at_any_scale_and_black_when_flat():
    nll = torch.stack([torch.linspace(0, 1, 16), torch.linspace(0, 100, 16)]).view(2, 1, 4, 4)
    grey = np.zeros((4, 4), dtype=np.uint8)
    first, second = (np.asarray(decode(h.raw)) for h in render(nll, [grey, grey], None))
    assert np.array_equal(first, second) and first.min() == 0 and first.max() == 255
    (flat,) = render(torch.full((1, 1, 4, 4), 3.0), [grey], None)
    assert np.asarray(decode(flat.raw)).max() == 0


@pytest.fixture
async def spatial(serve, spatial_artifact_dir):
    async with serve(model_dir=spatial_artifact_dir, max_batch_size=4) as client:
        yield client


async def test_an_inspection_model_answers_a_large_upload_with_maps_of_its_size(spatial):
    rng = np.random.default_rng(0)
    upload = (rng.uniform(90, 130, (768, 1024))).astype(np.uint8)
    files = [("files", ("part.jpg", jpeg(upload), "image/jpeg"))]
    response = await spatial.post("/anomaly", files=files, data={"heatmap": "true"})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert decode(result["heatmap"]).size == (1024, 768)
    assert decode(result["overlay"]).size == (1024, 768)
    assert decode(result["overlay"]).mode == "RGB"
    assert result["heatmap_scale"] == "absolute"
    assert "resized 1024x768->64x48" in result["conversions"]
    plain = await spatial.post("/anomaly", files=files)
    assert plain.json()["results"][0]["score"] == pytest.approx(result["score"], abs=1e-6)
    peak = np.asarray(decode(result["heatmap"])).max() / 255
    assert peak == pytest.approx(result["score"], abs=0.02)  # the score is the map's peak


async def test_the_maps_of_a_rotated_photo_are_upright(spatial):
    stored = np.full((60, 80), 110, dtype=np.uint8)  # stored 80 wide; EXIF 6: turn 90 deg
    files = [("files", ("phone.jpg", jpeg(stored, orientation=6), "image/jpeg"))]
    response = await spatial.post("/anomaly", files=files, data={"heatmap": "true"})
    (result,) = response.json()["results"]
    assert decode(result["overlay"]).size == (60, 80)
    assert any("EXIF orientation 6" in note for note in result["conversions"])


async def test_a_whole_image_model_draws_relative_maps_at_the_uploads_size(client, encode_file):
    pixels = (np.random.default_rng(1).uniform(0, 255, (200, 300))).astype(np.uint8)
    files = [("files", ("digit.png", encode_file(pixels), "image/png"))]
    response = await client.post("/anomaly", files=files, data={"heatmap": "true"})
    (result,) = response.json()["results"]
    assert decode(result["heatmap"]).size == (300, 200)
    assert decode(result["overlay"]).size == (300, 200)
    assert result["heatmap_scale"] == "relative"


async def test_without_a_heatmap_the_map_fields_are_null(client, images):
    response = await client.post("/anomaly", json={"images": images(1)})
    (result,) = response.json()["results"]
    assert result["heatmap"] is None and result["overlay"] is None
    assert result["heatmap_scale"] is None
