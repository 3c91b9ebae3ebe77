"""The model verbs. Each route parses, runs the model through the batcher, renders.

`api` holds the five verbs, behind the API-key guard when keys are set. A verb is
declared once, with `@verb(path, body format, response model)`, and served at three
addresses: `/{verb}` (the default model), `/models/{name}/{verb}` (its newest ready
version) and `/models/{name}/versions/{version}/{verb}`. The request holds the version
it resolved to until it is answered (`app.repository`); the body format reads the body
before the handler runs and documents it (`app.payloads`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import torch
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from app import offload
from app.config import Settings
from app.context import RequestContext
from app.dependencies import Call, ServicesDep
from app.errors import (
    LatentSizeError,
    OutOfRangeError,
    TooManyImagesError,
)
from app.heatmaps import HeatMap, render
from app.images import DecodedImages, load_images
from app.inference import Inference
from app.latents import draw_seed, interpolation_path, posterior_sample, prior_noise
from app.openapi import error_responses
from app.payloads import BodyFormat, ImageBody, image_body, json_body, max_json_values
from app.render import floats, image_payload, json_response
from app.schemas import (
    AnomalyForm,
    AnomalyRequest,
    AnomalyResponse,
    DecodeRequest,
    DecodeResponse,
    EncodeForm,
    EncodeRequest,
    EncodeResponse,
    InterpolateForm,
    InterpolateRequest,
    InterpolateResponse,
    SampleRequest,
    SampleResponse,
)

B = TypeVar("B")
Handler = Callable[[Call, B], Awaitable[Response]]

SIDES = ("start", "end")
# beyond what the middleware answers on any path: the key guard, the drain gate and the
# full queue, the deadline (415: `request_body`, for the routes that read their own)
api = APIRouter(responses=error_responses(401, 503, 504))

LATENT_VALUES = 4096  # per torch.tensor call, which holds the interpreter lock


NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "a model of the repository (GET /models)",
    "schema": {"type": "string"},
}
VERSION_PARAMETER = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "one of the model's versions",
    "schema": {"type": "integer", "minimum": 1},
}
ADDRESSES: tuple[tuple[str, list[dict[str, Any]]], ...] = (
    ("", []),
    ("/models/{name}", [NAME_PARAMETER]),
    ("/models/{name}/versions/{version:int}", [NAME_PARAMETER, VERSION_PARAMETER]),
)


def verb(
    path: str, body: BodyFormat[B], response_model: type[BaseModel]
) -> Callable[[Handler[B]], Handler[B]]:
    """Declare a model verb: POST `path` at every address, its body read by `body`."""

    def register(handler: Handler[B]) -> Handler[B]:
        async def endpoint(request: Request, services: ServicesDep) -> Response:
            params = request.path_params
            served = services.models.resolve(params.get("name"), params.get("version"))
            context: RequestContext = request.state.context
            context.model, context.version = served.name, str(served.version)
            call = Call(served.acquire(), services.settings, context)
            try:
                max_values = max_json_values(
                    services.settings.max_images, call.model.metadata.latent_dim
                )
                return await handler(call, await body.read(request, services.settings, max_values))
            finally:
                served.release()

        endpoint.body_models = body.models  # type: ignore[attr-defined]  # for app.openapi
        for prefix, parameters in ADDRESSES:
            openapi = body.openapi
            api.add_api_route(
                prefix + path,
                endpoint,
                methods=["POST"],
                name=handler.__name__,
                description=handler.__doc__,
                response_model=response_model,
                responses=error_responses(404) if parameters else None,
                openapi_extra={**openapi, "parameters": parameters} if parameters else openapi,
            )
        return handler

    return register


def _above(where: str, limit: int, setting: str) -> OutOfRangeError:
    """The schema's own message for an integer out of range, for a limit set by `setting`."""
    return OutOfRangeError(f"{where}: Input should be less than or equal to {limit} ({setting})")


async def _load(
    body: ImageBody[Any],
    model: Inference,
    settings: Settings,
    context: RequestContext,
    keep_originals: bool = False,
) -> DecodedImages:
    """Decode the uploads, off the event loop unless small (bounded by the deadline)."""
    context.items = len(body.images)
    job = partial(
        load_images,
        body.images,
        model.metadata,
        max_pixels=settings.max_pixels,
        deadline=context.deadline,
        names=body.names,
        keep_originals=keep_originals,
    )
    return await offload.run(offload.decodes_inline(body.images), job)


async def _images_out(images: torch.Tensor, image_format: str) -> dict[str, Any]:
    inline = images.numel() <= offload.INLINE_ENCODE_PIXELS
    return await offload.run(inline, image_payload, images, image_format)


async def _latents(vectors: list[list[float]], dim: int, where: str) -> torch.Tensor:
    for index, vector in enumerate(vectors):
        if len(vector) != dim:
            raise LatentSizeError(
                f"{where}[{index}] has {len(vector)} values; this model's latent size is {dim}"
            )
    inline = len(vectors) * dim <= LATENT_VALUES
    return await offload.run(inline, _latent_tensor, vectors, dim)


def _latent_tensor(vectors: list[list[float]], dim: int) -> torch.Tensor:
    """(N, D) from N lists, a few thousand values per conversion."""
    step = max(1, LATENT_VALUES // dim)
    parts = [torch.tensor(vectors[i : i + step]) for i in range(0, len(vectors), step)]
    return torch.cat(parts).to(torch.float32).reshape(len(vectors), dim)


@verb("/encode", image_body(EncodeRequest, EncodeForm), EncodeResponse)
async def encode(call: Call, body: ImageBody[EncodeRequest | EncodeForm]) -> Response:
    """Encode images (JSON base64 or multipart `files`) to mu, logvar and, if asked, z."""
    model, settings, context = call.model, call.settings, call.context
    images = await _load(body, model, settings, context)
    mu, logvar = await model.encode(images.tensor, context)
    options = body.options
    seed = (draw_seed() if options.seed is None else options.seed) if options.sample else None
    z = None if seed is None else floats(posterior_sample(mu, logvar, seed=seed))
    return await json_response(
        {
            "mu": floats(mu),
            "logvar": floats(logvar),
            "z": z,
            "seed": seed,
            "conversions": images.conversions,
        }
    )


@verb("/decode", json_body(DecodeRequest), DecodeResponse)
async def decode(call: Call, body: DecodeRequest) -> Response:
    """Decode latent vectors to images: base64 PNG, or [C][H][W] arrays with format=array."""
    model, settings, context = call.model, call.settings, call.context
    if len(body.latents) > settings.max_images:
        raise TooManyImagesError(f"{len(body.latents)} latents; at most {settings.max_images}")
    latents = await _latents(body.latents, model.metadata.latent_dim, "latents")
    context.items = len(latents)
    images = await model.decode(latents, context)
    return await json_response(await _images_out(images, body.format))


@verb("/sample", json_body(SampleRequest), SampleResponse)
async def sample(call: Call, body: SampleRequest) -> Response:
    """Draw n images from the model's sampling prior; the same seed gives the same images."""
    model, settings, context = call.model, call.settings, call.context
    if body.n > settings.max_samples:
        raise _above("body.n", settings.max_samples, "VAE_MAX_SAMPLES")
    seed = draw_seed() if body.seed is None else body.seed
    noise = prior_noise(body.n, model.metadata.latent_dim, temperature=body.temperature, seed=seed)
    context.items = body.n
    latents, images = await model.sample(noise, context)
    rendered = await _images_out(images, body.format)
    return await json_response({**rendered, "latents": floats(latents), "seed": seed})


@verb(
    "/interpolate",
    image_body(InterpolateRequest, InterpolateForm, max_images=2),
    InterpolateResponse,
)
async def interpolate(
    call: Call, body: ImageBody[InterpolateRequest | InterpolateForm]
) -> Response:
    """Walk in latent space from start to end (images or latents), both ends included."""
    model, settings, context = call.model, call.settings, call.context
    options = body.options
    if options.steps > settings.max_steps:
        raise _above("body.steps", settings.max_steps, "VAE_MAX_STEPS")
    ends, conversions = await _endpoints(body, model, settings, context)
    path = interpolation_path(ends[0], ends[1], options.steps, options.method)
    context.items = options.steps
    images = await model.decode(path, context)
    rendered = await _images_out(images, options.format)
    return await json_response({**rendered, "latents": floats(path), "conversions": conversions})


async def _endpoints(
    body: ImageBody[InterpolateRequest | InterpolateForm],
    model: Inference,
    settings: Settings,
    context: RequestContext,
) -> tuple[list[torch.Tensor], dict[str, list[str]]]:
    """Both ends as latent vectors (D,): latents as given, images encoded (one call) to mu."""
    options, dim = body.options, model.metadata.latent_dim
    ends: list[tuple[list[float] | None, str | bytes | None, str]]
    if isinstance(options, InterpolateForm):
        ends = [(None, image, name) for image, name in zip(body.images, body.names, strict=True)]
    else:
        ends = [
            (end.latent, end.image, f"{name}.image")
            for name, end in (("start", options.start), ("end", options.end))
        ]
    vectors: list[torch.Tensor | None] = [
        None if latent is None else (await _latents([latent], dim, f"{side}.latent"))[0]
        for (latent, _, _), side in zip(ends, SIDES, strict=True)
    ]
    notes: dict[str, list[str]] = {side: [] for side in SIDES}
    pending = [i for i, (_, image, _) in enumerate(ends) if image is not None]
    if pending:
        blobs = [image for i in pending if (image := ends[i][1]) is not None]
        uploads = ImageBody(options, blobs, [ends[i][2] for i in pending])
        images = await _load(uploads, model, settings, context)
        mu, _ = await model.encode(images.tensor, context)
        for row, i in enumerate(pending):
            vectors[i] = mu[row]
            notes[SIDES[i]] = images.conversions[row]
    return [vector for vector in vectors if vector is not None], notes


@verb("/anomaly", image_body(AnomalyRequest, AnomalyForm), AnomalyResponse)
async def anomaly(call: Call, body: ImageBody[AnomalyRequest | AnomalyForm]) -> Response:
    """Score images against the calibration: score, threshold, percentile, heat map."""
    model, settings, context = call.model, call.settings, call.context
    wanted = body.options.heatmap
    images = await _load(body, model, settings, context, keep_originals=wanted)
    scores, maps = await model.score(images.tensor, context, heatmap=wanted)
    calibration = model.metadata.calibration
    heatmaps: list[HeatMap | None] = [None] * len(scores)
    if maps is not None and images.originals is not None:
        threshold = calibration.threshold if model.metadata.calibrated_map else None
        heatmaps = list(await offload.run(False, render, maps, images.originals, threshold))
    results = [
        {
            "score": score,
            "threshold": calibration.threshold,
            "is_anomaly": score > calibration.threshold,
            "percentile": calibration.percentile(score),
            "heatmap": None if heat is None else heat.raw,
            "overlay": None if heat is None else heat.overlay,
            "heatmap_scale": None if heat is None else heat.scale,
            "conversions": notes,
        }
        for score, heat, notes in zip(scores.tolist(), heatmaps, images.conversions, strict=True)
    ]
    return await json_response({"results": results})
