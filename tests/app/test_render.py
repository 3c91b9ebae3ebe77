"""Response bodies: large ones are written off the loop, in parts, to the same bytes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.render import PART_BYTES, dumps_in_parts, json_response, json_size

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(0)
PAYLOADS = {
    "arrays": {"arrays": RNG.random((256, 1, 28, 28), dtype=np.float32), "seed": 3},
    "pngs": {"images": ["iVBOR" * 900] * 64, "latents": RNG.random((64, 32), dtype=np.float32)},
    "results": {
        "results": [{"score": 1.5, "is_anomaly": False, "heatmap": "x" * 600, "conversions": ["a"]}]
        * 200
    },
    "small": {"mu": RNG.random((2, 4), dtype=np.float32), "z": None},
}


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_parts_join_to_the_same_bytes(payload):
    assert dumps_in_parts(payload) == orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
async def test_json_response_body_is_the_payload(payload):
    response = await json_response(payload)
    assert response.media_type == "application/json"
    assert response.body == orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def test_size_estimate_covers_the_written_bytes_and_stops_at_the_budget():
    for payload in PAYLOADS.values():
        assert (
            json_size(payload, 1 << 30)
            >= len(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)) / 2
        )
    many = {"images": ["x" * 100] * 100_000}
    assert PART_BYTES < json_size(many, PART_BYTES) < 2 * PART_BYTES
