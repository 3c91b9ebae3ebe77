"""Bodies the routes read themselves: JSON or multipart, and everything a client can get wrong."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("path", ["/encode", "/anomaly"])
async def test_corrupt_upload_is_invalid_image(client, assert_error, path):
    files = [("files", ("bad.png", b"\x89PNG\r\n\x1a\n garbage", "image/png"))]
    response = await client.post(path, files=files)
    assert_error(response, 422, "invalid_image")
    assert "files[0] (bad.png)" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/encode", "/anomaly"])
async def test_text_file_is_invalid_image(client, assert_error, path, images):
    response = await client.post(path, json={"images": [*images(1), "aGVsbG8gd29ybGQ="]})
    assert_error(response, 422, "invalid_image")
    assert response.json()["error"]["message"].startswith("images[1]:")


async def test_bad_base64_is_invalid_image(client, assert_error):
    assert_error(await client.post("/encode", json={"images": ["%%%"]}), 422, "invalid_image")


async def test_unsupported_mode_upload(client, assert_error, encode_file, b64):
    tiff = b64(encode_file(np.ones((28, 28), dtype=np.float32), fmt="TIFF"))
    assert_error(await client.post("/encode", json={"images": [tiff]}), 422, "unsupported_mode")


async def test_oversize_image(serve, assert_error, digit_png, b64):
    async with serve(max_pixels=28 * 28) as client:
        response = await client.post("/anomaly", json={"images": [b64(digit_png(1, size=29))]})
        assert_error(response, 413, "image_too_large")


async def test_too_many_images_json_and_multipart(serve, assert_error, images, digit_png):
    async with serve(max_images=2, max_samples=2, max_steps=2) as client:
        response = await client.post("/encode", json={"images": images(3)})
        assert_error(response, 413, "too_many_images")
        files = [("files", (f"{i}.png", digit_png(i), "image/png")) for i in range(3)]
        assert_error(await client.post("/anomaly", files=files), 413, "too_many_images")


async def test_empty_image_list(client, assert_error):
    assert_error(await client.post("/encode", json={"images": []}), 422, "invalid_request")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/plain", b"hello"), ("application/x-www-form-urlencoded", b"images=x"), (None, b"")],
)
@pytest.mark.parametrize("path", ["/encode", "/decode", "/sample", "/anomaly", "/interpolate"])
async def test_wrong_content_type(client, assert_error, content_type, body, path):
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post(path, content=body, headers=headers)
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", ["/decode", "/sample"])
async def test_json_only_routes_refuse_multipart_and_take_json_suffixes(client, assert_error, path):
    files = [("files", ("0.png", b"x", "image/png"))]
    assert_error(await client.post(path, files=files), 415, "unsupported_media_type")
    headers = {"content-type": "application/vnd.api+json"}
    response = await client.post("/sample", content=b'{"n": 2}', headers=headers)
    assert response.status_code == 200 and len(response.json()["images"]) == 2


async def test_a_json_body_may_hold_only_the_values_a_valid_request_needs(client, assert_error):
    """Counted before parsing: orjson and pydantic would hold the interpreter lock."""
    largest = {"latents": [[0.5, -0.5, 1.0, 2.0]] * 256}  # max_images latents of size 4
    assert (await client.post("/decode", json=largest)).status_code == 200
    headers = {"content-type": "application/json"}
    numbers = b'{"latents": [[' + b"0," * 2000 + b"0]]}"
    response = await client.post("/decode", content=numbers, headers=headers)
    assert_error(response, 413, "payload_too_large")
    assert "values" in response.json()["error"]["message"]
    images = b'{"images": [' + b"1," * 2000 + b"1]}"
    assert_error(
        await client.post("/encode", content=images, headers=headers), 413, "payload_too_large"
    )


async def test_invalid_json(client, assert_error):
    response = await client.post(
        "/anomaly", content=b'{"images": [', headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "invalid_json")


async def test_json_nan_is_refused_by_self_parsed_routes(client, assert_error):
    body = b'{"start": {"latent": [NaN, 0, 0, 0]}, "end": {"latent": [0, 0, 0, 0]}}'
    response = await client.post(
        "/interpolate", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "invalid_json")


async def test_multipart_without_files(client, assert_error):
    response = await client.post("/encode", data={"sample": "true"}, files={"x": ("a", b"")})
    assert_error(response, 422, "invalid_request")
    assert "files" in response.json()["error"]["message"]


async def test_multipart_files_as_text_fields(client, assert_error):
    response = await client.post("/encode", data={"files": "abc"}, files={"x": ("a", b"")})
    assert_error(response, 422, "invalid_multipart")


async def test_multipart_bad_option(client, assert_error, digit_png):
    files = [("files", ("a.png", digit_png(1), "image/png"))]
    response = await client.post("/encode", files=files, data={"seed": "minus one"})
    assert_error(response, 422, "invalid_request")


async def test_broken_multipart_body(client, assert_error):
    headers = {"content-type": "multipart/form-data"}  # no boundary
    response = await client.post("/anomaly", content=b"--x\r\n", headers=headers)
    assert_error(response, 422, "invalid_multipart")


async def test_interpolate_needs_exactly_two_files(client, assert_error, digit_png):
    files = [("files", ("a.png", digit_png(1), "image/png"))]
    assert_error(await client.post("/interpolate", files=files), 422, "invalid_request")


# --- strict JSON, one message per range, base64 with line breaks, filenames ---------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sample", {"n": True}),  # booleans are not numbers
        ("/sample", {"n": "4"}),  # strings are not numbers
        ("/sample", {"n": 4.0}),  # an integer field takes integers
        ("/sample", {"seed": 5.0}),
        ("/sample", {"temperature": "1.0"}),
        ("/encode", {"images": ["x"], "sample": "yes"}),  # booleans are true or false
        ("/encode", {"images": ["x"], "sample": 1}),
        ("/decode", {"latents": [["0.5", 0, 0, 0]]}),
    ],
)
async def test_json_types_are_strict(client, assert_error, path, body):
    response = await client.post(path, json=body)
    assert_error(response, 422, "invalid_request")
    assert response.json()["error"]["message"].startswith("body.")


async def test_an_integer_for_a_float_is_fine(client):
    assert (await client.post("/sample", json={"temperature": 1, "seed": 1})).status_code == 200


async def test_form_fields_are_text_parsed_as_numbers_and_booleans(client, digit_png):
    files = [("files", ("a.png", digit_png(1), "image/png"))]
    response = await client.post("/encode", files=files, data={"sample": "yes", "seed": "7"})
    assert response.status_code == 200 and response.json()["seed"] == 7


@pytest.mark.parametrize(
    "seed", [2**63, 2**64, 2**70, 10**300], ids=["2^63", "2^64", "2^70", "1e300"]
)
async def test_every_seed_out_of_range_gets_one_message(client, assert_error, digit_png, seed):
    expected = "body.seed: Input should be less than or equal to 9223372036854775807"
    headers = {"content-type": "application/json"}
    body = b'{"n": 1, "seed": %d}' % seed
    response = await client.post("/sample", content=body, headers=headers)
    assert_error(response, 422, "out_of_range")
    assert response.json()["error"]["message"] == expected
    files = [("files", ("a.png", digit_png(1), "image/png"))]
    form = await client.post("/encode", files=files, data={"sample": "true", "seed": str(seed)})
    assert_error(form, 422, "out_of_range")
    assert form.json()["error"]["message"] == expected


async def test_every_n_out_of_range_gets_one_message(client, assert_error):
    headers = {"content-type": "application/json"}
    for n in (257, 2**63, 2**70):
        response = await client.post("/sample", content=b'{"n": %d}' % n, headers=headers)
        assert_error(response, 422, "out_of_range")
        expected = "body.n: Input should be less than or equal to 256 (VAE_MAX_SAMPLES)"
        assert response.json()["error"]["message"] == expected


async def test_an_integer_of_thousands_of_digits_is_out_of_range(client, assert_error):
    body = b'{"seed": ' + b"9" * 5000 + b"}"
    response = await client.post(
        "/sample", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "out_of_range")


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
async def test_base64_with_line_breaks_is_accepted(client, images, newline):
    """What `base64` prints without -w0: lines of 76 characters (RFC 2045)."""
    (text,) = images(1)
    wrapped = newline.join(text[i : i + 76] for i in range(0, len(text), 76)) + newline
    plain = (await client.post("/encode", json={"images": [text]})).json()
    response = await client.post("/encode", json={"images": [wrapped]})
    assert response.status_code == 200 and response.json()["mu"] == plain["mu"]


async def test_base64_with_spaces_is_refused_saying_what_is_allowed(client, assert_error, images):
    (text,) = images(1)
    response = await client.post("/encode", json={"images": [text[:40] + " " + text[40:]]})
    assert_error(response, 422, "invalid_image")
    assert "line breaks are allowed, spaces are not" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("length", "says"),
    [
        (256, "files[0]: the filename has 256 characters; at most 255"),
        (5000, "longer than 4224 bytes: filenames may have at most 255 characters"),
    ],
    ids=["just over", "past the part-header limit"],
)
async def test_an_over_long_filename_is_a_clear_422(client, assert_error, digit_png, length, says):
    files = [("files", ("a" * (length - 4) + ".png", digit_png(1), "image/png"))]
    response = await client.post("/encode", files=files)
    assert_error(response, 422, "invalid_multipart")
    assert says in response.json()["error"]["message"]


async def test_a_filename_of_255_characters_is_fine(client, digit_png):
    files = [("files", ("a" * 251 + ".png", digit_png(1), "image/png"))]
    assert (await client.post("/encode", files=files)).status_code == 200
