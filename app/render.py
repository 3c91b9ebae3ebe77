"""Response bodies from tensors: an orjson response class and the shared wire pieces.

Routes build plain dicts of numpy arrays and answer with `json_response`, so large float
arrays go from tensor to JSON bytes without a per-float Python object. The declared
`response_model`s document exactly these dicts.

orjson holds the interpreter lock for a whole call, so a large body (256 images as
float arrays: ~3 ms; 64x64 RGB: ~30 ms) is written in a worker thread, one row or list
item per call, which lets the event loop in between; the bytes are the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import torch
from starlette.responses import JSONResponse, Response

from app import offload
from app.images import images_to_base64_png

NUMPY = orjson.OPT_SERIALIZE_NUMPY
PART_BYTES = 16 * 1024  # JSON written per orjson call off the loop
FLOAT_BYTES = 16  # the most orjson writes for a float32, e.g. -1.2345678e-05


class OrjsonResponse(JSONResponse):
    """JSON via orjson; numpy arrays serialise natively (float32 stays float32)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=NUMPY)


async def json_response(content: dict[str, Any]) -> Response:
    """200 with `content` as JSON, written on the loop when small, else in a thread."""
    if json_size(content, offload.INLINE_JSON_BYTES) <= offload.INLINE_JSON_BYTES:
        return OrjsonResponse(content)
    body = await offload.run(False, dumps_in_parts, content)
    return Response(body, media_type="application/json")


def json_size(value: Any, budget: int) -> int:
    """About how many bytes `value` takes as JSON; counting stops once past `budget`."""
    if isinstance(value, np.ndarray):
        return FLOAT_BYTES * value.size
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, dict | list | tuple):
        total = 2
        for item in value.values() if isinstance(value, dict) else value:
            total += json_size(item, budget - total) + 1
            if total > budget:
                break
        return total
    return FLOAT_BYTES


def dumps_in_parts(value: Any) -> bytes:
    """`orjson.dumps(value)`, byte for byte, with no single call writing much more than
    `PART_BYTES`: large dicts, lists and arrays are written an item (or a row) at a time."""
    if json_size(value, PART_BYTES) <= PART_BYTES or not _splittable(value):
        return orjson.dumps(value, option=NUMPY)
    if isinstance(value, dict):
        members = (orjson.dumps(key) + b":" + dumps_in_parts(item) for key, item in value.items())
        return b"{" + b",".join(members) + b"}"
    return b"[" + b",".join(dumps_in_parts(item) for item in value) + b"]"


def _splittable(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim > 1 and len(value) > 1
    return isinstance(value, dict | list | tuple)


def floats(tensor: torch.Tensor) -> np.ndarray:
    """A CPU float32 tensor as a numpy array orjson can write without copying rows."""
    return np.ascontiguousarray(tensor.detach().to(torch.float32).cpu().numpy())


def image_payload(images: torch.Tensor, image_format: str) -> dict[str, Any]:
    """(N, C, H, W) in [0, 1] -> `{"images": [base64 PNG]}` or `{"arrays": [[C][H][W]]}`."""
    if image_format == "array":
        return {"arrays": floats(images)}
    return {"images": images_to_base64_png(images)}
