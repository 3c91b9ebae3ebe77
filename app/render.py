"""Response bodies from tensors: an orjson response class and the shared wire pieces.

Routes build plain dicts of numpy arrays and return `OrjsonResponse` directly, so large
float arrays go from tensor to JSON bytes without a per-float Python object. The
declared `response_model`s document exactly these dicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import torch
from starlette.responses import JSONResponse

from app.images import images_to_base64_png


class OrjsonResponse(JSONResponse):
    """JSON via orjson; numpy arrays serialise natively (float32 stays float32)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def floats(tensor: torch.Tensor) -> np.ndarray:
    """A CPU float32 tensor as a numpy array orjson can write without copying rows."""
    return np.ascontiguousarray(tensor.detach().to(torch.float32).cpu().numpy())


def image_payload(images: torch.Tensor, image_format: str) -> dict[str, Any]:
    """(N, C, H, W) in [0, 1] -> `{"images": [base64 PNG]}` or `{"arrays": [[C][H][W]]}`."""
    if image_format == "array":
        return {"arrays": floats(images)}
    return {"images": images_to_base64_png(images)}
