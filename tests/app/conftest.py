"""Fixtures for the service tests: the real app over `httpx.ASGITransport`, inside its
lifespan, and real images made with Pillow."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from PIL import Image

from app.config import Settings
from app.logs import ROOT_LOGGER, JsonFormatter
from app.main import create_app
from app.runtime import ModelRuntime

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="session")
def make_settings(artifact_dir: Path) -> Callable[..., Settings]:
    """Settings for the tiny artifact on CPU; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_dir": artifact_dir,
            "device": "cpu",
            "max_batch_size": 16,
            "max_wait_ms": 5.0,
            "max_queue": 512,
            "torch_threads": 1,
        }
        return Settings(**{**values, **overrides})

    return make


@pytest.fixture(scope="session")
def serve(make_settings: Callable[..., Settings]) -> Serve:
    """`async with serve(**settings) as client:` runs a fresh app for the block."""

    @asynccontextmanager
    async def running(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(make_settings(**overrides))
        async with LifespanManager(app, startup_timeout=30) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://vae") as client:
                yield client

    return running


@pytest.fixture(scope="module")
async def client(serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    """One app with default test settings, shared by a module's tests."""
    async with serve() as client:
        yield client


@pytest.fixture
def slow_model(monkeypatch):
    """Every model call takes at least 5 ms more: bursts stay in flight long enough to see."""
    run = ModelRuntime.run

    def slow_run(self, op, batch):
        time.sleep(0.005)
        return run(self, op, batch)

    monkeypatch.setattr(ModelRuntime, "run", slow_run)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every JSON line the service logs during the test, as written."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Collect()
    logger = logging.getLogger(ROOT_LOGGER)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _png(pixels: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _digit(seed: int, size: int = 28) -> bytes:
    """A greyscale PNG of sparse random strokes (different per seed)."""
    rng = np.random.default_rng(seed)
    return _png(((rng.random((size, size)) > 0.75) * 255).astype(np.uint8))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="session")
def encode_file() -> Callable[..., bytes]:
    """`encode_file(pixels, mode=None, fmt="PNG")`: an image file made by Pillow."""
    return _png


@pytest.fixture(scope="session")
def digit_png() -> Callable[..., bytes]:
    """`digit_png(seed, size=28)`: PNG bytes, different per seed."""
    return _digit


@pytest.fixture(scope="session")
def b64() -> Callable[[bytes], str]:
    return _b64


@pytest.fixture(scope="session")
def images() -> Callable[..., list[str]]:
    """`images(n, start=0)`: n different base64 PNG digits."""
    return lambda n, start=0: [_b64(_digit(seed)) for seed in range(start, start + n)]


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["request_id"] == response.headers["x-request-id"]


@pytest.fixture(scope="session")
def assert_error() -> Callable[[httpx.Response, int, str], None]:
    """`assert_error(response, status, code)`: the documented error body, and its id."""
    return _assert_error
