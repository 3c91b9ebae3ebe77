"""The Open Inference Protocol's (KServe v2) tensors on the wire, both ways.

A request body is JSON, or, with the binary tensor data extension, a JSON header of
`Inference-Header-Content-Length` bytes followed by the raw tensors of the inputs whose
`parameters.binary_data_size` says how many bytes each takes, in input order. A body
may be gzip or deflate encoded (`Content-Encoding`), and is bounded after decoding as
before. JSON `data` is the tensor's elements in row-major order, flat or nested.

An output goes back as JSON `data`, or raw after the JSON header when the request asks
for it (`outputs[i].parameters.binary_data`, or `parameters.binary_data_output` for
every output). Raw data is little-endian; BOOL is one byte per element.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.errors import InvalidRequestError, PayloadTooLargeError

HEADER_LENGTH = "inference-header-content-length"
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
MAX_TENSORS = 16


class InvalidTensorError(InvalidRequestError):
    code = "invalid_tensor"


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray  # of `shape`, in the datatype's dtype


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, Tensor]
    outputs: dict[str, bool | None] = field(default_factory=dict)  # asked for: binary?

    @property
    def binary_default(self) -> bool:
        return self.parameters.get("binary_data_output") is True


def decode_body(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body as sent before `Content-Encoding` (gzip, deflate or none), at most `max_bytes`."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidRequestError(f"Content-Encoding {encoding}: send gzip, deflate or none")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by its header
    try:
        plain = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        raise InvalidRequestError(f"the body is not valid {encoding} data") from None
    if len(plain) > max_bytes or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"the decoded request body is larger than {max_bytes} bytes")
    return plain


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """A v2 inference request: its JSON header, then any binary tensor data."""
    header, binary = _split(body, header_length)
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidTensorError(f"the request is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs", []), list):
        raise InvalidTensorError("the request must be an object with an `inputs` list")
    inputs, offset = {}, 0
    for spec in document.get("inputs", [])[: MAX_TENSORS + 1]:
        tensor, offset = _input(spec, binary, offset)
        if tensor.name in inputs:
            raise InvalidTensorError(f"input {tensor.name!r} is given twice")
        inputs[tensor.name] = tensor
    if len(inputs) > MAX_TENSORS:
        raise InvalidTensorError(f"at most {MAX_TENSORS} inputs")
    if offset != len(binary):
        raise InvalidTensorError(
            f"{len(binary)} bytes of binary data, but the inputs declare {offset}"
        )
    return InferRequest(
        _text(document.get("id"), "id"),
        _parameters(document.get("parameters"), "parameters"),
        inputs,
        _requested_outputs(document.get("outputs")),
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isascii() or not header_length.strip().isdigit():
        raise InvalidTensorError("Inference-Header-Content-Length must be a number of bytes")
    length = int(header_length.strip()[:12])
    if length > len(body):
        raise InvalidTensorError(f"the JSON header is {length} bytes; the body is {len(body)}")
    return body[:length], body[length:]


def _input(spec: object, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise InvalidTensorError("each input must be an object")
    name = _text(spec.get("name"), "inputs[].name") or ""
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidTensorError(f"input {name!r}: datatype {datatype!r} is not supported here")
    shape = _shape(spec.get("shape"), name)
    dtype, count = DATATYPES[datatype], math.prod(shape)
    size = _parameters(spec.get("parameters"), f"input {name!r} parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidTensorError(f"input {name!r}: binary_data_size must be a byte count")
        if size != count * dtype.itemsize or offset + size > len(binary):
            raise InvalidTensorError(
                f"input {name!r}: {size} bytes of binary data for shape {list(shape)} {datatype}"
            )
        array = np.frombuffer(binary, dtype, count, offset).reshape(shape)
        return Tensor(name, datatype, shape, array), offset + size
    return Tensor(name, datatype, shape, _from_json(spec.get("data"), dtype, shape, name)), offset


def _shape(raw: object, name: str) -> tuple[int, ...]:
    if not (
        isinstance(raw, list)
        and len(raw) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) for d in raw)
    ):
        raise InvalidTensorError(f"input {name!r}: shape must be a list of at most 8 integers")
    shape: tuple[int, ...] = tuple(raw)
    if any(d < 0 for d in shape) or math.prod(shape) > 1 << 28:
        raise InvalidTensorError(f"input {name!r}: shape {list(shape)} is not a tensor shape")
    return shape


def _from_json(data: object, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    if data is None:
        raise InvalidTensorError(f"input {name!r} has neither data nor binary_data_size")
    try:
        array = np.asarray(data)
        if not _fits(array, dtype):
            raise ValueError
        return array.astype(dtype).reshape(shape)
    except (ValueError, TypeError):
        raise InvalidTensorError(
            f"input {name!r}: data must be {math.prod(shape)} numbers of {dtype.name} "
            f"for shape {list(shape)}"
        ) from None


def _fits(array: np.ndarray, dtype: np.dtype) -> bool:
    """JSON numbers that `dtype` holds exactly: booleans for BOOL, integers in range for
    the integer types, any number for the float types."""
    if dtype.kind == "b" or array.dtype.kind == "b":
        return dtype.kind == array.dtype.kind
    if dtype.kind == "f":
        return array.dtype.kind in "iuf"
    if array.dtype.kind not in "iu":
        return False
    limits = np.iinfo(dtype)
    return array.size == 0 or (limits.min <= array.min() and array.max() <= limits.max)


def _requested_outputs(raw: object) -> dict[str, bool | None]:
    if raw is None:
        return {}
    if not isinstance(raw, list) or not all(isinstance(o, dict) for o in raw):
        raise InvalidTensorError("`outputs` must be a list of objects")
    asked = {}
    for output in raw[: MAX_TENSORS + 1]:
        name = _text(output.get("name"), "outputs[].name") or ""
        binary = _parameters(output.get("parameters"), "outputs[].parameters").get("binary_data")
        asked[name] = None if binary is None else bool(binary)
    return asked


def _text(value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidTensorError(f"{where} must be a string")
    return value


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidTensorError(f"{where} must be an object")
    return value


def render_response(
    request: InferRequest,
    model_name: str,
    model_version: str,
    outputs: dict[str, tuple[str, np.ndarray]],
    parameters: dict[str, Any],
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON plus binary outputs."""
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        header["id"] = request.id
    if parameters:
        header["parameters"] = parameters
    chunks, described = [], []
    for name, (datatype, array) in outputs.items():
        wire = np.ascontiguousarray(array, dtype=DATATYPES[datatype])
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(wire.shape)}
        binary = request.outputs.get(name)
        if binary if binary is not None else request.binary_default:
            raw = wire.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = wire.reshape(-1)
        described.append(entry)
    header["outputs"] = described
    json_part = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return json_part, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(json_part))}
    return b"".join([json_part, *chunks]), headers
