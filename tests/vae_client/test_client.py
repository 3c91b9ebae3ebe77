"""The clients against a scripted server (httpx.MockTransport): wire format and parsing.

The same scripted answers drive `VAEClient` and `AsyncVAEClient`, so the two cannot drift.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from vae_client import AsyncVAEClient, Images, VAEClient

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], httpx.Response]


def png(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), value).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Recorder:
    """A scripted server: a JSON answer by path, and every request it saw."""

    def __init__(self, answers: dict[str, tuple[int, Any]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.answers[request.url.path]
        return httpx.Response(status, json=body)

    @property
    def body(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.requests[-1].content)
        return loaded


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Awaitable[Any]]:
    """call(recorder, "encode", ...) runs the method on the sync or the async client."""

    async def run(handler: Handler, verb: str, /, *args: Any, **kwargs: Any) -> Any:
        if request.param == "sync":
            with VAEClient("http://vae.test", transport=httpx.MockTransport(handler)) as client:
                return getattr(client, verb)(*args, **kwargs)
        transport = httpx.MockTransport(handler)
        async with AsyncVAEClient("http://vae.test", transport=transport) as client:
            return await getattr(client, verb)(*args, **kwargs)

    return run


async def test_encode_sends_base64_images_and_reads_the_posterior(
    call: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    path = tmp_path / "digit.png"
    path.write_bytes(png(1))
    answer = {"mu": [[0.0]] * 3, "logvar": [[1.0]] * 3, "z": [[2.0]] * 3, "seed": 7,
              "conversions": [[], [], ["resized 30x30 -> 28x28"]]}  # fmt: skip
    server = Recorder({"/encode": (200, answer)})
    pil = Image.new("L", (30, 30), 2)
    encoding = await call(server, "encode", [png(0), path, pil], sample=True, seed=7)
    sent = server.body
    assert sent["sample"] is True and sent["seed"] == 7
    decoded = [base64.b64decode(image) for image in sent["images"]]
    assert decoded[:2] == [png(0), png(1)]
    assert Image.open(io.BytesIO(decoded[2])).size == (30, 30)
    assert encoding.mu == answer["mu"] and encoding.z == answer["z"] and encoding.seed == 7
    assert encoding.conversions[2] == ["resized 30x30 -> 28x28"]


async def test_decode_sends_latents_and_decodes_pngs(call: Callable[..., Awaitable[Any]]) -> None:
    server = Recorder({"/decode": (200, {"images": [b64(png(3))]})})
    images: Images = await call(server, "decode", [(0.5, -1)], format="png")
    assert server.body == {"latents": [[0.5, -1.0]], "format": "png"}
    assert images.images == [png(3)] and images.latents is None
    assert images.pil()[0].size == (28, 28)


async def test_sample_asks_for_arrays(call: Callable[..., Awaitable[Any]]) -> None:
    answer = {"images": None, "arrays": [[[[0.5]]]], "latents": [[0.1]], "seed": 3}
    server = Recorder({"/sample": (200, answer)})
    images: Images = await call(server, "sample", 1, seed=3, temperature=0.5, format="array")
    assert server.body == {"n": 1, "seed": 3, "temperature": 0.5, "format": "array"}
    assert images.images == [] and images.arrays == [[[[0.5]]]] and images.seed == 3


async def test_interpolate_takes_an_image_and_a_latent(
    call: Callable[..., Awaitable[Any]],
) -> None:
    answer = {"images": [b64(png())] * 3, "latents": [[0.0], [0.5], [1.0]],
              "conversions": {"start": [], "end": []}}  # fmt: skip
    server = Recorder({"/interpolate": (200, answer)})
    images: Images = await call(server, "interpolate", png(9), [1.0], steps=3, method="slerp")
    assert server.body == {
        "start": {"image": b64(png(9))},
        "end": {"latent": [1.0]},
        "steps": 3,
        "method": "slerp",
        "format": "png",
    }
    assert len(images.images) == 3 and images.latents == answer["latents"]


async def test_anomaly_reads_scores_and_heatmaps(call: Callable[..., Awaitable[Any]]) -> None:
    result = {"score": 90.5, "threshold": 120.0, "is_anomaly": False, "percentile": 41.0,
              "heatmap": b64(png(200)), "overlay": b64(png(100)), "heatmap_scale": "absolute",
              "conversions": []}  # fmt: skip
    server = Recorder({"/anomaly": (200, {"results": [result]})})
    (score,) = await call(server, "anomaly", [png()], heatmap=True)
    assert server.body == {"images": [b64(png())], "heatmap": True}
    assert (score.score, score.threshold, score.is_anomaly, score.percentile) == (
        90.5, 120.0, False, 41.0,
    )  # fmt: skip
    assert score.heatmap == png(200)
    assert score.overlay == png(100) and score.heatmap_scale == "absolute"


async def test_model_info_reads_the_shapes(call: Callable[..., Awaitable[Any]]) -> None:
    answer = {"name": "mnist", "latent_dim": 16, "likelihood": "bernoulli", "device": "cpu",
              "image": {"channels": 1, "height": 28, "width": 28}, "metrics": {}}  # fmt: skip
    server = Recorder({"/model": (200, answer)})
    info = await call(server, "model_info")
    assert (info.name, info.latent_dim, info.image_shape) == ("mnist", 16, (1, 28, 28))
    assert info.metadata == answer and server.requests[-1].method == "GET"


@pytest.mark.parametrize(("status", "expected"), [(200, True), (503, False)])
async def test_probes_say_up_or_not(
    call: Callable[..., Awaitable[Any]], status: int, expected: bool
) -> None:
    body = {"error": {"code": "not_ready", "message": "loading", "request_id": "r"}}
    answer = (status, {"status": "ready"} if status == 200 else body)
    server = Recorder({"/ready": answer, "/health": answer})
    assert await call(server, "ready") is expected
    assert await call(server, "health") is expected


async def test_api_key_travels_as_a_bearer_token() -> None:
    server = Recorder({"/health": (200, {"status": "ok"})})
    transport = httpx.MockTransport(server)
    with VAEClient("http://vae.test", api_key="s3cret", transport=transport) as client:
        client.health()
    async with AsyncVAEClient(
        "http://vae.test", api_key="s3cret", transport=httpx.MockTransport(server)
    ) as aclient:
        await aclient.health()
    assert [r.headers["authorization"] for r in server.requests] == ["Bearer s3cret"] * 2
    with VAEClient("http://vae.test", transport=transport) as client:
        client.health()
    assert "authorization" not in server.requests[-1].headers
