"""The repository over HTTP: model metadata, the list of models, and load / unload.

`listing` (behind the API-key guard) answers GET /model, /models and /models/{name};
`admin` (behind the admin keys, mounted only when `VAE_ADMIN_KEYS` is set) loads and
unloads models by name, as Triton's model-control API does.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.config import Settings
from app.dependencies import ServicesDep
from app.errors import ModelLoadError
from app.openapi import error_responses
from app.render import OrjsonResponse
from app.repository import ModelRepository, ModelVersion
from app.runtime import ModelRuntime
from app.schemas import ImageShape, Limits, ModelEntry, ModelInfo, ModelsResponse, VersionInfo

listing = APIRouter(responses=error_responses(401, 503, 504))
admin = APIRouter(responses=error_responses(401, 404, 503, 504))
INFO_FIELDS = {
    "name",
    "format_version",
    "architecture",
    "likelihood",
    "latent_dim",
    "preprocessing",
    "calibration",
    "metrics",
    "training",
    "data_fingerprint",
    "torch_version",
    "created_at",
}


def model_info(runtime: ModelRuntime, settings: Settings) -> ModelInfo:
    meta = runtime.metadata
    return ModelInfo(
        **meta.model_dump(include=INFO_FIELDS),
        image=ImageShape(channels=meta.channels, height=meta.height, width=meta.width),
        device=str(runtime.device),
        batch_invariant=runtime.invariance.holds,
        limits=Limits(
            max_images=settings.max_images,
            max_pixels=settings.max_pixels,
            max_body_bytes=settings.max_body_bytes,
            max_samples=settings.max_samples,
            max_steps=settings.max_steps,
            max_batch_size=settings.max_batch_size,
        ),
    )


def version_info(entry: ModelVersion, settings: Settings) -> VersionInfo:
    runtime = entry.runtime
    metadata = None if runtime is None else model_info(runtime, settings)
    return VersionInfo(
        version=entry.version, state=entry.state, reason=entry.reason, metadata=metadata
    )


def model_entry(models: ModelRepository, name: str, settings: Settings) -> ModelEntry:
    versions = models.table.versions(name)
    return ModelEntry(
        name=name,
        default=name == models.default,
        state="ready" if models.table.serving(name) else "unavailable",
        versions=[version_info(entry, settings) for entry in versions],
    )


def _json(model: ModelEntry | ModelInfo | ModelsResponse) -> Response:
    return OrjsonResponse(model.model_dump(mode="json"))


@listing.get("/model", response_model=ModelInfo)
async def default_model(services: ServicesDep) -> Response:
    """What a client needs: shapes, latent size, likelihood, calibration, metrics, limits."""
    runtime = services.models.resolve(None).runtime
    assert runtime is not None
    return _json(model_info(runtime, services.settings))


@listing.get("/models", response_model=ModelsResponse)
async def list_models(services: ServicesDep) -> Response:
    """Every model and version, with its state (and why it failed) and its metadata."""
    models, settings = services.models, services.settings
    entries = [model_entry(models, name, settings) for name in models.names()]
    return _json(ModelsResponse(models=entries))


@listing.get("/models/{name}", response_model=ModelEntry, responses=error_responses(404))
async def one_model(name: str, services: ServicesDep) -> Response:
    """One model: its versions, their states and metadata."""
    services.models.resolve_name(name)
    return _json(model_entry(services.models, name, services.settings))


@admin.post("/models/{name}/load", response_model=ModelEntry, responses=error_responses(409))
async def load_model(name: str, services: ServicesDep) -> Response:
    """Load (or reload) a model from the repository; answers once it is ready or failed."""
    newest = await services.models.load(name)
    if newest.state == "failed":
        raise ModelLoadError(f"model {name!r} version {newest.version}: {newest.reason}")
    return _json(model_entry(services.models, name, services.settings))


@admin.post("/models/{name}/unload", response_model=ModelEntry)
async def unload_model(name: str, services: ServicesDep) -> Response:
    """Unload every version of a model once its requests have finished."""
    await services.models.unload(name)
    return _json(model_entry(services.models, name, services.settings))
