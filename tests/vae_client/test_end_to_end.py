"""The clients against the real app and the tiny real artifact of tests/conftest.py.

`AsyncVAEClient` talks to the app in-process (httpx.ASGITransport inside its lifespan);
`VAEClient` talks HTTP to the same app served by uvicorn on loopback, in a thread.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from PIL import Image

from app.config import Settings
from app.main import create_app
from vae_client import (
    AsyncVAEClient,
    AuthenticationError,
    ClientError,
    VAEClient,
)

pytestmark = pytest.mark.anyio

API_KEY = "e2e-key"


def settings(artifact_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"model_dir": artifact_dir, "device": "cpu", "max_batch_size": 8,
                              "max_queue": 512, "torch_threads": 1}  # fmt: skip
    return Settings(**{**values, **overrides})


def digit(seed: int) -> Image.Image:
    """A 28x28 greyscale image of sparse random strokes."""
    noise = Image.effect_noise((28, 28), 64 + seed)
    return noise.point(lambda value: 255 if value > 170 else 0)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
async def client(artifact_dir: Path) -> AsyncIterator[AsyncVAEClient]:
    app = create_app(settings(artifact_dir))
    async with LifespanManager(app, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with AsyncVAEClient("http://vae", transport=transport) as vae:
            yield vae


@pytest.fixture(scope="module")
def http_url(artifact_dir: Path) -> Iterator[str]:
    """The app with API keys, served by uvicorn on a loopback port."""
    config = uvicorn.Config(
        create_app(settings(artifact_dir, api_keys=API_KEY)),
        host="127.0.0.1", port=0, log_level="warning", access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    (socket,) = server.servers[0].sockets
    yield f"http://127.0.0.1:{socket.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)


async def test_model_info_and_probes(client: AsyncVAEClient) -> None:
    info = await client.model_info()
    assert (info.latent_dim, info.image_shape, info.device) == (4, (1, 28, 28), "cpu")
    assert await client.health() and await client.ready()


async def test_encode_then_decode_round_trip(client: AsyncVAEClient) -> None:
    encoding = await client.encode([digit(1), png(digit(2))], sample=True, seed=5)
    assert len(encoding.mu) == 2 and len(encoding.mu[0]) == 4
    assert encoding.z is not None and encoding.seed == 5
    decoded = await client.decode(encoding.mu)
    assert [(image.mode, image.size) for image in decoded.pil()] == [("L", (28, 28))] * 2
    arrays = await client.decode(encoding.mu, format="array")
    assert arrays.images == [] and arrays.arrays is not None and len(arrays.arrays[0][0]) == 28


async def test_sample_is_reproducible(client: AsyncVAEClient) -> None:
    first = await client.sample(3, seed=11, temperature=0.8)
    again = await client.sample(3, seed=11, temperature=0.8)
    assert first.images == again.images and first.latents == again.latents
    assert first.seed == 11 and len(first.images) == 3


async def test_interpolate_from_an_image_to_a_latent(client: AsyncVAEClient) -> None:
    end = [0.5, -0.5, 0.25, 0.0]
    path = await client.interpolate(digit(3), end, steps=5, method="slerp")
    assert len(path.images) == 5 and path.latents is not None
    assert path.latents[-1] == pytest.approx(end, abs=1e-5)


async def test_anomaly_with_heatmap(client: AsyncVAEClient) -> None:
    (result,) = await client.anomaly([digit(4)], heatmap=True)
    assert result.is_anomaly == (result.score > result.threshold)
    assert 0.0 <= result.percentile <= 100.0
    assert result.heatmap is not None and Image.open(io.BytesIO(result.heatmap)).size == (28, 28)
    assert result.overlay is not None and Image.open(io.BytesIO(result.overlay)).mode == "RGB"
    assert result.heatmap_scale in ("absolute", "relative")


async def test_server_errors_arrive_typed(client: AsyncVAEClient) -> None:
    with pytest.raises(ClientError) as wrong_size:
        await client.decode([[0.0, 1.0]])
    assert wrong_size.value.code == "latent_size_mismatch" and wrong_size.value.status == 422
    assert wrong_size.value.request_id
    with pytest.raises(ClientError) as corrupt:
        await client.encode([b"not an image"])
    assert corrupt.value.code == "invalid_image"


def test_sync_client_over_http_with_an_api_key(http_url: str) -> None:
    with VAEClient(http_url, api_key=API_KEY) as vae:
        assert vae.ready()
        assert len(vae.sample(2, seed=1).images) == 2
        assert len(vae.encode([digit(6)]).logvar) == 1
    with VAEClient(http_url) as anonymous, pytest.raises(AuthenticationError) as refused:
        anonymous.sample(1)
    assert refused.value.code == "unauthorized" and refused.value.status == 401
