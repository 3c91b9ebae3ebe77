"""The naive baseline: a FastAPI app that calls the model inside each request, one at a time.

What a first version of the service usually looks like: each `async def` route decodes
its images, calls the TorchScript model right there on the event loop and renders the
answer. Requests therefore run strictly one after another, each at its own batch size,
and a model call blocks everything else. It speaks issue 3's wire format for the four
benchmarked endpoints and reuses the service's image and JSON helpers, so that against
`app/` only the serving strategy differs. Serve it with::

    uvicorn --factory bench.naive_app:from_environment

reading `VAE_MODEL_DIR`, `VAE_DEVICE` (auto, cpu, cuda), `VAE_TORCH_THREADS` and
`VAE_WARMUP_BATCH_SIZES` (comma-separated; default 1) as the service does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import torch
from fastapi import FastAPI, Request, Response

from app.artifact import load_artifact
from app.images import images_to_base64_png, load_images
from app.latents import draw_seed, prior_sample
from app.render import OrjsonResponse, floats
from app.runtime import pick_device

MAX_PIXELS = 4096 * 4096
WARMUP_PASSES = 2


def create_naive_app(
    model_dir: Path,
    device: str = "cpu",
    torch_threads: int = 0,
    warmup_sizes: tuple[int, ...] = (1,),
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        module, metadata = load_artifact(model_dir, device)
        _warm_up(module, (*metadata.image_shape,), device, warmup_sizes)
        app.state.module, app.state.metadata = module, metadata
        yield

    app = FastAPI(title="naive vae", lifespan=lifespan, default_response_class=OrjsonResponse)

    def images_in(request: Request, body: dict[str, Any]) -> torch.Tensor:
        decoded = load_images(body["images"], request.app.state.metadata, max_pixels=MAX_PIXELS)
        return decoded.tensor.to(device)  # (N, C, H, W)

    def decoded_images(request: Request, latents: torch.Tensor) -> list[str]:
        with torch.inference_mode():
            images = request.app.state.module.decode(latents.to(device))  # (N, C, H, W)
        return images_to_base64_png(images.cpu())

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        body = orjson.loads(await request.body())
        with torch.inference_mode():
            mu, logvar = request.app.state.module.encode(images_in(request, body))
        return OrjsonResponse({"mu": floats(mu), "logvar": floats(logvar), "z": None})

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        body = orjson.loads(await request.body())
        latents = torch.tensor(body["latents"], dtype=torch.float32)  # (N, D)
        return OrjsonResponse({"images": decoded_images(request, latents)})

    @app.post("/sample")
    async def sample(request: Request) -> Response:
        body = orjson.loads(await request.body())
        seed = draw_seed() if body.get("seed") is None else body["seed"]
        dim = request.app.state.metadata.latent_dim
        latents = prior_sample(
            body.get("n", 1), dim, temperature=body.get("temperature", 1.0), seed=seed
        )
        images = decoded_images(request, latents)
        return OrjsonResponse({"images": images, "latents": floats(latents), "seed": seed})

    @app.post("/anomaly")
    async def anomaly(request: Request) -> Response:
        body = orjson.loads(await request.body())
        with torch.inference_mode():
            scores = request.app.state.module.score(images_in(request, body)).cpu()
        calibration = request.app.state.metadata.calibration
        results = [
            {
                "score": score,
                "threshold": calibration.threshold,
                "is_anomaly": score > calibration.threshold,
                "percentile": calibration.percentile(score),
                "heatmap": None,
            }
            for score in scores.tolist()
        ]
        return OrjsonResponse({"results": results})

    @app.get("/ready")
    async def ready() -> Response:
        return OrjsonResponse({"status": "ready"})

    return app


def _warm_up(module: Any, shape: tuple[int, ...], device: str, sizes: tuple[int, ...]) -> None:
    """Every op at every size, twice: TorchScript optimises a graph after its first runs."""
    with torch.inference_mode():
        for size in sizes:
            images = torch.rand(size, *shape, device=device)
            for _ in range(WARMUP_PASSES):
                mu, _ = module.encode(images)
                module.decode(mu)
                module.score(images)


def from_environment() -> FastAPI:
    """The factory uvicorn calls: the same `VAE_*` variables the service reads."""
    device = str(pick_device(os.environ.get("VAE_DEVICE", "auto")))
    sizes = os.environ.get("VAE_WARMUP_BATCH_SIZES", "1")
    return create_naive_app(
        Path(os.environ["VAE_MODEL_DIR"]),
        device,
        int(os.environ.get("VAE_TORCH_THREADS", "0")),
        tuple(int(size) for size in sizes.split(",") if size.strip()),
    )
