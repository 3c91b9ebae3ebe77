"""v2 tensors on the wire: JSON and binary data, compressed bodies, and bad requests."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import orjson
import pytest

from app.errors import InvalidRequestError, PayloadTooLargeError
from app.tensors import InvalidTensorError, decode_body, parse_request, render_response


def binary_request(arrays: dict[str, tuple[str, np.ndarray]], **extra) -> tuple[bytes, str]:
    inputs = [
        {
            "name": name,
            "datatype": datatype,
            "shape": list(array.shape),
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, (datatype, array) in arrays.items()
    ]
    header = orjson.dumps({"inputs": inputs, **extra})
    return header + b"".join(a.tobytes() for _, a in arrays.values()), str(len(header))


def test_json_data_flat_or_nested_is_read_in_row_major_order():
    flat = {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}
    nested = {**flat, "name": "y", "data": [[1, 2], [3, 4]]}
    request = parse_request(orjson.dumps({"inputs": [flat, nested], "id": "r1"}), None)
    assert request.id == "r1"
    for name in ("x", "y"):
        assert request.inputs[name].array.dtype == np.float32
        assert request.inputs[name].array.tolist() == [[1, 2], [3, 4]]


def test_binary_inputs_follow_the_json_header_in_order():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1)
    latents = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    body, length = binary_request({"a": ("UINT8", pixels), "b": ("FP32", latents)})
    request = parse_request(body, length)
    assert np.array_equal(request.inputs["a"].array, pixels)
    assert np.array_equal(request.inputs["b"].array, latents)


@pytest.mark.parametrize(
    ("body", "length", "match"),
    [
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}',
            None,
            "data must be 2",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "STRING", "shape": [1], "data": [1]}]}',
            None,
            "datatype",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1.5]}]}',
            None,
            "data must be",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]}',
            None,
            "shape",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}',
            None,
            "data must be",
        ),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, "neither data"),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [256]}]}',
            None,
            "must be",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]}',
            None,
            "must be",
        ),
        (b'{"inputs": {"x": 1}}', None, "inputs"),
        (b"[1, 2", None, "not valid JSON"),
        (b'{"inputs": []}', "99", "header is 99 bytes"),
        (b'{"inputs": []}', "1e3", "number of bytes"),
        (b'{"inputs": []}xyz', "14", "3 bytes of binary data"),
    ],
)
def test_malformed_requests_are_refused_with_the_reason(body, length, match):
    with pytest.raises(InvalidTensorError, match=match):
        parse_request(body, length)


def test_a_binary_size_that_does_not_fit_the_shape_is_refused():
    body, length = binary_request({"a": ("FP32", np.zeros((2, 2), np.float32))})
    bad = body.replace(b'"binary_data_size":16', b'"binary_data_size":12')
    with pytest.raises(InvalidTensorError, match="12 bytes of binary data"):
        parse_request(bad, str(int(length) - 0))


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress])
def test_gzip_and_deflate_bodies_are_decoded_within_the_limit(compress):
    plain = b'{"inputs": []}' * 100
    encoding = "gzip" if compress is gzip.compress else "deflate"
    assert decode_body(compress(plain), encoding, max_bytes=10_000) == plain
    with pytest.raises(PayloadTooLargeError):
        decode_body(compress(b"0" * 50_000), encoding, max_bytes=10_000)  # a small bomb
    with pytest.raises(InvalidRequestError, match="not valid"):
        decode_body(b"plain text", encoding, max_bytes=10_000)
    with pytest.raises(InvalidRequestError, match="Content-Encoding br"):
        decode_body(plain, "br", max_bytes=10_000)


def test_outputs_go_back_as_json_or_binary_as_asked():
    scores = np.array([0.5, 1.5], dtype=np.float32)
    verdicts = np.array([False, True])
    body = orjson.dumps(
        {"inputs": [], "outputs": [{"name": "scores", "parameters": {"binary_data": True}}]}
    )
    request = parse_request(body, None)
    outputs = {"scores": ("FP32", scores), "is_anomaly": ("BOOL", verdicts)}
    content, headers = render_response(request, "m.anomaly", "3", outputs, {"threshold": 1.0})
    length = int(headers["inference-header-content-length"])
    header = orjson.loads(content[:length])
    assert header["model_name"] == "m.anomaly" and header["model_version"] == "3"
    assert header["parameters"] == {"threshold": 1.0}
    binary, as_json = header["outputs"]
    assert binary["parameters"] == {"binary_data_size": 8} and "data" not in binary
    assert np.frombuffer(content[length:], np.float32).tolist() == [0.5, 1.5]
    assert as_json == {
        "name": "is_anomaly",
        "datatype": "BOOL",
        "shape": [2],
        "data": [False, True],
    }
    plain, headers = render_response(parse_request(b'{"inputs": []}', None), "m", "1", outputs, {})
    assert headers == {"content-type": "application/json"}
    assert orjson.loads(plain)["outputs"][0]["data"] == [0.5, 1.5]
