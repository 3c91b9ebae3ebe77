"""Hostile clients against a real uvicorn on loopback: each answer is the right one, and
`/health` stays fast while the worst request the limits allow is in flight.

One server for the module, with the service's default limits. `/health` is probed from
its own connection on a thread while the hostile request runs, so that a stalled event
loop shows up as slow probes (the issue's 23 WebP bombs made them wait 5 s).
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from app.images import WEBP_MAX_PIXELS
from tests.app.server_process import Server, start_server, stop

pytestmark = pytest.mark.slow

HEALTH_P99_S = 0.050
MAX_BODY = 8 * 1024 * 1024  # the default VAE_MAX_BODY_BYTES


@pytest.fixture(scope="module")
def server(artifact_dir, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("hostile") / "stderr"
    running = start_server(artifact_dir, log, {"VAE_TORCH_THREADS": "1"})
    yield running
    stop(running)


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def health_while(server: Server, hostile: Callable[[], httpx.Response]) -> tuple:
    """Run `hostile` on a thread; probe /health until it returns. (response, p99 s, probes)"""
    latencies: list[float] = []
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=server.url, timeout=10) as probe:
        probe.get("/health")  # the probe's connection is open before the hostile request
        running = pool.submit(hostile)
        while not running.done():
            started = time.perf_counter()
            assert probe.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.002)
        response = running.result()
    latencies.sort()
    return response, latencies[int(0.99 * (len(latencies) - 1))], len(latencies)


def image_file(size: tuple[int, int], fmt: str, mode: str = "L", **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def files(blobs: list[bytes], suffix: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (f"{i}.{suffix}", blob, "application/octet-stream"))
        for i, blob in enumerate(blobs)
    ]


def test_the_issues_webp_bombs_are_refused_before_decoding(server, client):
    """23 lossless WebPs of 4096x4096 pixels, 702 bytes each: 413 from the header alone."""
    bomb = image_file((4096, 4096), "WEBP", lossless=True)
    assert len(bomb) < 1024
    response, p99, probes = health_while(
        server, lambda: client.post("/encode", files=files([bomb] * 23, "webp"))
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "image_too_large"
    assert "WebP" in response.json()["error"]["message"]
    assert p99 < HEALTH_P99_S, (p99, probes)


def test_health_stays_fast_while_the_largest_allowed_webps_decode(server, client):
    side = math.isqrt(WEBP_MAX_PIXELS)
    allowed = image_file((side, side), "WEBP", lossless=True)
    response, p99, probes = health_while(
        server, lambda: client.post("/encode", files=files([allowed] * 8, "webp"))
    )
    assert response.status_code == 200, response.text
    assert f"resized {side}x{side}->28x28" in response.json()["conversions"][0]
    assert probes >= 10 and p99 < HEALTH_P99_S, (p99, probes)


def test_health_stays_fast_while_the_largest_allowed_json_is_read(server, client):
    """~8 MiB of JSON: one base64 PNG of noise (orjson, base64 and Pillow on ~6 MB)."""
    rng = np.random.default_rng(0)
    side = int((MAX_BODY * 0.74 / 3) ** 0.5)  # a noise PNG barely compresses
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    noise = buffer.getvalue()
    body = b'{"images": ["' + base64.b64encode(noise) + b'"]}'
    assert MAX_BODY * 0.95 < len(body) <= MAX_BODY
    headers = {"content-type": "application/json"}
    response, p99, probes = health_while(
        server, lambda: client.post("/anomaly", content=body, headers=headers)
    )
    assert response.status_code == 200, response.text
    assert probes >= 5 and p99 < HEALTH_P99_S, (p99, probes)


def test_a_json_body_of_numbers_is_refused_before_parsing(server, client):
    """8 MiB of `0,0,0,...` would hold the interpreter lock for ~0.2 s in orjson."""
    body = b'{"latents": [[' + b"0," * (MAX_BODY // 2 - 16) + b"0]]}"
    headers = {"content-type": "application/json"}
    response, p99, probes = health_while(
        server, lambda: client.post("/decode", content=body, headers=headers)
    )
    assert response.status_code == 413, response.text
    assert "values" in response.json()["error"]["message"]
    assert p99 < HEALTH_P99_S, (p99, probes)
