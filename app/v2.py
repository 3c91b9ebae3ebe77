"""The Open Inference Protocol (KServe v2 REST), with Triton's model-repository extension.

Each model of the repository appears as one v2 model per verb, `{name}.{verb}` (e.g.
`mnist.encode`); each takes and gives tensors, and its options travel as request
`parameters`::

    {name}.encode       images UINT8 [N,H,W,C] (or FP32 [N,C,H,W] in the model's pixel
                        range)                          -> mu, logvar FP32 [N,D]; z FP32
                        [N,D] with sample=true (seed)
    {name}.decode       latents FP32 [N,D]              -> images FP32 [N,C,H,W] in [0,1]
    {name}.sample       (no inputs; n, seed, temperature) -> images, latents
    {name}.interpolate  start, end FP32 [1,D] latents or UINT8 [1,H,W,C] images
                        (steps, method)                 -> images, latents
    {name}.anomaly      images                          -> scores FP32 [N],
                        is_anomaly BOOL [N], percentiles FP32 [N]; heatmap FP32
                        [N,1,H,W] with heatmap=true (see `app.heatmaps` for its scale)

A v2 request goes through the same version resolution, batcher, limits, deadline, keys
and metrics as the native routes, and gives the same numbers for the same input. The
repository extension's `{name}` is the VAE model: loading `mnist` loads every verb.
The health routes never need a key; the repository routes need an admin key and exist
only when `VAE_ADMIN_KEYS` is set. Errors are `{"error": "..."}` (`app.errors`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from fastapi import APIRouter, Request, Response

from app.artifact import ModelMetadata
from app.config import Settings
from app.context import RequestContext
from app.dependencies import ServicesDep
from app.errors import (
    InvalidRequestError,
    LatentSizeError,
    ModelLoadError,
    NonFiniteInputError,
    OutOfRangeError,
    TooManyImagesError,
    UnknownModelError,
)
from app.inference import Inference
from app.latents import draw_seed, interpolation_path, posterior_sample, prior_noise
from app.repository import ModelRepository, ModelVersion
from app.tensors import (
    HEADER_LENGTH,
    InferRequest,
    InvalidTensorError,
    Tensor,
    decode_body,
    parse_request,
    render_response,
)

PLATFORM = "pytorch_torchscript"
SERVER = {
    "name": "vae-serve",
    "version": "0.1.0",
    "extensions": ["binary_tensor_data", "model_repository"],
}
health = APIRouter(include_in_schema=False)
api = APIRouter(include_in_schema=False)
repository = APIRouter(include_in_schema=False)

Outputs = dict[str, tuple[str, np.ndarray]]  # name -> (datatype, array)


@dataclass(frozen=True)
class Verb:
    inputs: Callable[[ModelMetadata], list[dict[str, Any]]]
    outputs: Callable[[ModelMetadata], list[dict[str, Any]]]
    infer: Callable[
        [Inference, InferRequest, Settings, RequestContext],
        Awaitable[tuple[Outputs, dict[str, Any]]],
    ]


def _spec(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def _images_in(meta: ModelMetadata) -> list[dict[str, Any]]:
    return [_spec("images", "UINT8", [-1, meta.height, meta.width, meta.channels])]


def _images_out(meta: ModelMetadata) -> list[dict[str, Any]]:
    return [
        _spec("images", "FP32", [-1, *meta.image_shape]),
        _spec("latents", "FP32", [-1, meta.latent_dim]),
    ]


def _fp32(tensor: torch.Tensor) -> tuple[str, np.ndarray]:
    return "FP32", tensor.detach().to(torch.float32).cpu().numpy()


# --- reading inputs and parameters ------------------------------------------------------
def _input(request: InferRequest, name: str) -> Tensor:
    if name not in request.inputs:
        raise InvalidTensorError(f"input {name!r} is missing")
    return request.inputs[name]


def _check_names(request: InferRequest, expected: set[str]) -> None:
    unknown = set(request.inputs) - expected
    if unknown:
        raise InvalidTensorError(
            f"unknown inputs {sorted(unknown)}; this model takes {sorted(expected)}"
        )


def _parameter(request: InferRequest, name: str, kind: type, default: Any) -> Any:
    value = request.parameters.get(name, default)
    if value is default:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidRequestError(f"parameter {name!r} must be {kind.__name__}")
    return value


def images_of(tensor: Tensor, meta: ModelMetadata, max_images: int) -> torch.Tensor:
    """UINT8 [N,H,W,C] ([N,H,W] for greyscale) or FP32 [N,C,H,W] -> the model's input."""
    h, w, c = meta.height, meta.width, meta.channels
    n = tensor.shape[0] if tensor.shape else 0
    if n > max_images:
        raise TooManyImagesError(f"{n} images; at most {max_images} per request")
    if tensor.datatype == "UINT8" and tensor.shape in (
        (n, h, w, c),
        *([(n, h, w)] if c == 1 else []),
    ):
        pixels = torch.from_numpy(tensor.array.reshape(n, h, w, c).copy()).permute(0, 3, 1, 2)
        low, high = meta.preprocessing.pixel_range
        scaled = pixels.to(torch.float32) * meta.preprocessing.scale
        return scaled.clamp_(low, high).contiguous()
    if tensor.datatype == "FP32" and tensor.shape == (n, c, h, w):
        images = torch.from_numpy(tensor.array.copy())
        low, high = meta.preprocessing.pixel_range
        if not bool(torch.isfinite(images).all()) or images.min() < low or images.max() > high:
            raise OutOfRangeError(f"input {tensor.name!r}: FP32 pixels must lie in [{low}, {high}]")
        return images
    raise InvalidTensorError(
        f"input {tensor.name!r}: {tensor.datatype} {list(tensor.shape)}; this model takes "
        f"UINT8 [N,{h},{w},{c}] or FP32 [N,{c},{h},{w}] with N >= 1"
    )


def latents_of(tensor: Tensor, dim: int, max_rows: int) -> torch.Tensor:
    """FP32 [N,D] (or [D]) -> (N, D), finite."""
    if tensor.datatype != "FP32" or tensor.shape[-1:] != (dim,) or len(tensor.shape) > 2:
        raise LatentSizeError(
            f"input {tensor.name!r}: {tensor.datatype} {list(tensor.shape)}; this model takes "
            f"FP32 [N,{dim}]"
        )
    latents = torch.from_numpy(tensor.array.reshape(-1, dim).copy())
    if len(latents) > max_rows:
        raise TooManyImagesError(f"{len(latents)} latents; at most {max_rows}")
    if len(latents) == 0:
        raise InvalidTensorError(f"input {tensor.name!r} holds no latent")
    if not bool(torch.isfinite(latents).all()):
        raise NonFiniteInputError(f"input {tensor.name!r} holds NaN or inf")
    return latents


# --- the verbs --------------------------------------------------------------------------
async def infer_encode(
    model: Inference, request: InferRequest, settings: Settings, context: RequestContext
) -> tuple[Outputs, dict[str, Any]]:
    _check_names(request, {"images"})
    images = images_of(_input(request, "images"), model.metadata, settings.max_images)
    context.items = len(images)
    mu, logvar = await model.encode(images, context)
    outputs: Outputs = {"mu": _fp32(mu), "logvar": _fp32(logvar)}
    if not _parameter(request, "sample", bool, False):
        return outputs, {}
    seed = _seed(request)
    outputs["z"] = _fp32(posterior_sample(mu, logvar, seed=seed))
    return outputs, {"seed": seed}


async def infer_decode(
    model: Inference, request: InferRequest, settings: Settings, context: RequestContext
) -> tuple[Outputs, dict[str, Any]]:
    _check_names(request, {"latents"})
    latents = latents_of(_input(request, "latents"), model.metadata.latent_dim, settings.max_images)
    context.items = len(latents)
    return {"images": _fp32(await model.decode(latents, context))}, {}


async def infer_sample(
    model: Inference, request: InferRequest, settings: Settings, context: RequestContext
) -> tuple[Outputs, dict[str, Any]]:
    _check_names(request, set())
    n = _parameter(request, "n", int, 1)
    temperature = _parameter(request, "temperature", float, 1.0)
    if not 1 <= n <= settings.max_samples:
        raise OutOfRangeError(f"n={n}: between 1 and {settings.max_samples}")
    if not 0.0 <= temperature <= 10.0:
        raise OutOfRangeError(f"temperature={temperature}: between 0 and 10")
    seed = _seed(request)
    noise = prior_noise(n, model.metadata.latent_dim, temperature=temperature, seed=seed)
    context.items = n
    latents, images = await model.sample(noise, context)  # the artifact's sampling prior
    return {"images": _fp32(images), "latents": _fp32(latents)}, {"seed": seed}


async def infer_interpolate(
    model: Inference, request: InferRequest, settings: Settings, context: RequestContext
) -> tuple[Outputs, dict[str, Any]]:
    _check_names(request, {"start", "end"})
    steps = _parameter(request, "steps", int, 8)
    method = _parameter(request, "method", str, "linear")
    if not 2 <= steps <= settings.max_steps:
        raise OutOfRangeError(f"steps={steps}: between 2 and {settings.max_steps}")
    if method not in ("linear", "slerp"):
        raise InvalidRequestError("parameter 'method' must be linear or slerp")
    ends = [await _end(model, _input(request, side), context) for side in ("start", "end")]
    path = interpolation_path(ends[0], ends[1], steps, method)
    context.items = steps
    images = await model.decode(path, context)
    return {"images": _fp32(images), "latents": _fp32(path)}, {}


async def _end(model: Inference, tensor: Tensor, context: RequestContext) -> torch.Tensor:
    """An end of the path as a latent (D,): given, or an image encoded to its mu."""
    if tensor.datatype == "FP32" and tensor.shape[-1:] == (model.metadata.latent_dim,):
        return latents_of(tensor, model.metadata.latent_dim, max_rows=1)[0]
    images = images_of(tensor, model.metadata, max_images=1)
    mu, _ = await model.encode(images, context)
    return mu[0]


async def infer_anomaly(
    model: Inference, request: InferRequest, settings: Settings, context: RequestContext
) -> tuple[Outputs, dict[str, Any]]:
    _check_names(request, {"images"})
    images = images_of(_input(request, "images"), model.metadata, settings.max_images)
    heatmap = _parameter(request, "heatmap", bool, False)
    context.items = len(images)
    scores, maps = await model.score(images, context, heatmap=heatmap)
    calibration = model.metadata.calibration
    percentiles = [calibration.percentile(score) for score in scores.tolist()]
    outputs: Outputs = {
        "scores": _fp32(scores),
        "is_anomaly": ("BOOL", (scores > calibration.threshold).numpy()),
        "percentiles": ("FP32", np.asarray(percentiles, dtype=np.float32)),
    }
    if maps is not None:
        outputs["heatmap"] = _fp32(maps)
    return outputs, {"threshold": calibration.threshold}


def _seed(request: InferRequest) -> int:
    seed = _parameter(request, "seed", int, None)
    if seed is not None and not 0 <= seed <= 2**63 - 1:
        raise OutOfRangeError(f"seed={seed}: between 0 and 2**63-1")
    return draw_seed() if seed is None else seed


VERBS: dict[str, Verb] = {
    "encode": Verb(
        _images_in,
        lambda m: [_spec(o, "FP32", [-1, m.latent_dim]) for o in ("mu", "logvar", "z")],
        infer_encode,
    ),
    "decode": Verb(
        lambda m: [_spec("latents", "FP32", [-1, m.latent_dim])],
        lambda m: _images_out(m)[:1],
        infer_decode,
    ),
    "sample": Verb(lambda m: [], _images_out, infer_sample),
    "interpolate": Verb(
        lambda m: [_spec(side, "FP32", [1, m.latent_dim]) for side in ("start", "end")],
        _images_out,
        infer_interpolate,
    ),
    "anomaly": Verb(
        _images_in,
        lambda m: [
            _spec("scores", "FP32", [-1]),
            _spec("is_anomaly", "BOOL", [-1]),
            _spec("percentiles", "FP32", [-1]),
            _spec("heatmap", "FP32", [-1, 1, m.height, m.width]),
        ],
        infer_anomaly,
    ),
}


# --- routes -----------------------------------------------------------------------------
def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _address(models: ModelRepository, request: Request) -> tuple[str, ModelVersion]:
    """(verb, the version serving it) for `{model_name}[/versions/{model_version}]`."""
    params = request.path_params
    name, _, verb = str(params["model_name"]).rpartition(".")
    if verb not in VERBS or not name:
        raise UnknownModelError(
            f"no v2 model {params['model_name']!r}: models are <name>.<verb>, verb one of "
            f"{', '.join(VERBS)}"
        )
    raw = params.get("model_version")
    if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) < 10):
        raise UnknownModelError(f"model {name!r} has no version {raw!r}")
    return verb, models.resolve(name, None if raw is None else int(raw))


@health.get("/v2/health/live")
async def live() -> Response:
    return _json({"live": True})


@health.get("/v2/health/ready")
async def ready(services: ServicesDep) -> Response:
    lifecycle = services.lifecycle
    if lifecycle.ready and not lifecycle.draining:
        return _json({"ready": True})
    return _json({"ready": False}, 503)


@api.get("/v2")
async def server_metadata() -> Response:
    return _json(SERVER)


async def model_metadata(request: Request, services: ServicesDep) -> Response:
    verb, served = _address(services.models, request)
    assert served.runtime is not None
    meta = served.runtime.metadata
    versions = [
        str(e.version) for e in services.models.table.versions(served.name) if e.state == "ready"
    ]
    return _json(
        {
            "name": request.path_params["model_name"],
            "versions": sorted(set(versions), key=int),
            "platform": PLATFORM,
            "inputs": VERBS[verb].inputs(meta),
            "outputs": VERBS[verb].outputs(meta),
        }
    )


async def model_ready(request: Request, services: ServicesDep) -> Response:
    _, served = _address(services.models, request)
    return _json({"name": request.path_params["model_name"], "ready": served.state == "ready"})


async def infer(request: Request, services: ServicesDep) -> Response:
    verb, served = _address(services.models, request)
    context: RequestContext = request.state.context
    context.model, context.version = served.name, str(served.version)
    model = served.acquire()
    try:
        settings = services.settings
        encoding = request.headers.get("content-encoding", "")
        body = decode_body(await request.body(), encoding, settings.max_body_bytes)
        inference = parse_request(body, request.headers.get(HEADER_LENGTH))
        outputs, parameters = await VERBS[verb].infer(model, inference, settings, context)
    finally:
        served.release()
    unknown = set(inference.outputs) - set(outputs)
    if unknown:
        raise InvalidTensorError(
            f"this request gives no output {sorted(unknown)}; it gives {sorted(outputs)}"
        )
    if inference.outputs:
        outputs = {name: outputs[name] for name in inference.outputs}
    content, headers = render_response(
        inference, request.path_params["model_name"], str(served.version), outputs, parameters
    )
    return Response(content, headers=headers)


for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
    api.add_api_route(prefix, model_metadata, methods=["GET"])
    api.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
    api.add_api_route(prefix + "/infer", infer, methods=["POST"])


# --- Triton's model-repository extension ------------------------------------------------
TRITON_STATES = {
    "loading": "LOADING",
    "ready": "READY",
    "unloading": "UNLOADING",
    "failed": "UNAVAILABLE",
}


@repository.post("/v2/repository/index")
async def repository_index(request: Request, services: ServicesDep) -> Response:
    body = await request.body()
    try:
        options = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequestError('the body must be a JSON object, e.g. {"ready": true}') from None
    only_ready = isinstance(options, dict) and options.get("ready") is True
    index = []
    models = services.models
    for name in models.names():
        entries = models.table.versions(name)
        for entry in entries:
            state = TRITON_STATES[entry.state]
            index.append(
                {
                    "name": name,
                    "version": str(entry.version),
                    "state": state,
                    "reason": entry.reason or "",
                }
            )
        if not entries:
            index.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
    if only_ready:
        index = [item for item in index if item["state"] == "READY"]
    return _json(index)


@repository.post("/v2/repository/models/{model_name}/load")
async def repository_load(model_name: str, services: ServicesDep) -> Response:
    newest = await services.models.load(model_name)
    if newest.state == "failed":
        raise ModelLoadError(f"model {model_name!r} version {newest.version}: {newest.reason}")
    return _json({})


@repository.post("/v2/repository/models/{model_name}/unload")
async def repository_unload(model_name: str, services: ServicesDep) -> Response:
    await services.models.unload(model_name)
    return _json({})
