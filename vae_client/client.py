"""`VAEClient` (blocking) and `AsyncVAEClient`: one method per endpoint of the vae-serve API.

Images go in as PNG/JPEG bytes, file paths or Pillow images and travel as base64 in JSON;
images come back as PNG bytes in the dataclasses of `vae_client.results`. A latent is any
sequence of floats (a list, a NumPy row). Error answers raise `vae_client.errors.VAEError`.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import httpx

from vae_client.errors import error_from_response
from vae_client.results import (
    AnomalyResult,
    Encoding,
    Images,
    ModelInfo,
    parse_anomaly,
    parse_encoding,
    parse_images,
    parse_model_info,
)

DEFAULT_URL = "http://127.0.0.1:8000"


class _Saveable(Protocol):
    """A Pillow image, or anything else that writes itself as a file in a named format."""

    def save(self, fp: Any, format: str | None = None) -> None: ...


ImageInput: TypeAlias = bytes | str | os.PathLike[str] | _Saveable
Latent: TypeAlias = Sequence[float]
Format: TypeAlias = Literal["png", "array"]


class VAEClient:
    """A blocking client; use it as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def encode(
        self, images: Sequence[ImageInput], *, sample: bool = False, seed: int | None = None
    ) -> Encoding:
        return parse_encoding(self._post("/encode", _encode_body(images, sample, seed)))

    def decode(self, latents: Sequence[Latent], *, format: Format = "png") -> Images:
        return parse_images(self._post("/decode", _decode_body(latents, format)))

    def sample(
        self, n: int, *, seed: int | None = None, temperature: float = 1.0, format: Format = "png"
    ) -> Images:
        return parse_images(self._post("/sample", _sample_body(n, seed, temperature, format)))

    def interpolate(
        self,
        start: ImageInput | Latent,
        end: ImageInput | Latent,
        *,
        steps: int = 8,
        method: Literal["linear", "slerp"] = "linear",
        format: Format = "png",
    ) -> Images:
        return parse_images(
            self._post("/interpolate", _interpolate_body(start, end, steps, method, format))
        )

    def anomaly(
        self, images: Sequence[ImageInput], *, heatmap: bool = False
    ) -> list[AnomalyResult]:
        return parse_anomaly(self._post("/anomaly", _anomaly_body(images, heatmap)))

    def health(self) -> bool:
        return _up(self._http.get("/health"))

    def ready(self) -> bool:
        return _up(self._http.get("/ready"))

    def model_info(self) -> ModelInfo:
        return parse_model_info(_json(self._http.get("/model")))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VAEClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _json(self._http.post(path, json=body))


class AsyncVAEClient:
    """The asyncio twin of `VAEClient`; use it with `async with`, or `await aclose()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def encode(
        self, images: Sequence[ImageInput], *, sample: bool = False, seed: int | None = None
    ) -> Encoding:
        return parse_encoding(await self._post("/encode", _encode_body(images, sample, seed)))

    async def decode(self, latents: Sequence[Latent], *, format: Format = "png") -> Images:
        return parse_images(await self._post("/decode", _decode_body(latents, format)))

    async def sample(
        self, n: int, *, seed: int | None = None, temperature: float = 1.0, format: Format = "png"
    ) -> Images:
        return parse_images(await self._post("/sample", _sample_body(n, seed, temperature, format)))

    async def interpolate(
        self,
        start: ImageInput | Latent,
        end: ImageInput | Latent,
        *,
        steps: int = 8,
        method: Literal["linear", "slerp"] = "linear",
        format: Format = "png",
    ) -> Images:
        body = _interpolate_body(start, end, steps, method, format)
        return parse_images(await self._post("/interpolate", body))

    async def anomaly(
        self, images: Sequence[ImageInput], *, heatmap: bool = False
    ) -> list[AnomalyResult]:
        return parse_anomaly(await self._post("/anomaly", _anomaly_body(images, heatmap)))

    async def health(self) -> bool:
        return _up(await self._http.get("/health"))

    async def ready(self) -> bool:
        return _up(await self._http.get("/ready"))

    async def model_info(self) -> ModelInfo:
        return parse_model_info(_json(await self._http.get("/model")))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncVAEClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _json(await self._http.post(path, json=body))


# --- the wire format, shared by both clients ----------------------------------------------------


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        raise error_from_response(response)
    body: dict[str, Any] = response.json()
    return body


def _up(response: httpx.Response) -> bool:
    """True on 2xx, False on 503 (starting or draining); any other error raises."""
    if response.status_code == 503:
        return False
    _json(response)
    return True


def _b64_image(image: ImageInput) -> str:
    if isinstance(image, bytes):
        data = image
    elif isinstance(image, str | os.PathLike):
        data = Path(image).read_bytes()
    else:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    return base64.b64encode(data).decode("ascii")


def _rows(latents: Sequence[Latent]) -> list[list[float]]:
    return [[float(v) for v in latent] for latent in latents]


def _endpoint(point: ImageInput | Latent) -> dict[str, Any]:
    if isinstance(point, bytes | str | os.PathLike) or hasattr(point, "save"):
        return {"image": _b64_image(point)}
    return {"latent": [float(v) for v in point]}


def _images(images: Sequence[ImageInput]) -> list[str]:
    return [_b64_image(image) for image in images]


def _encode_body(images: Sequence[ImageInput], sample: bool, seed: int | None) -> dict[str, Any]:
    return {"images": _images(images), "sample": sample, "seed": seed}


def _decode_body(latents: Sequence[Latent], fmt: Format) -> dict[str, Any]:
    return {"latents": _rows(latents), "format": fmt}


def _anomaly_body(images: Sequence[ImageInput], heatmap: bool) -> dict[str, Any]:
    return {"images": _images(images), "heatmap": heatmap}


def _sample_body(n: int, seed: int | None, temperature: float, fmt: Format) -> dict[str, Any]:
    return {"n": n, "seed": seed, "temperature": temperature, "format": fmt}


def _interpolate_body(
    start: ImageInput | Latent, end: ImageInput | Latent, steps: int, method: str, fmt: Format
) -> dict[str, Any]:
    ends = {"start": _endpoint(start), "end": _endpoint(end)}
    return {**ends, "steps": steps, "method": method, "format": fmt}
