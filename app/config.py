"""Service configuration: one settings class, read from `VAE_*` environment variables.

Every knob an operator may turn lives here with its range; `create_app` reads it once.
The defaults are safe for a public port: bounded bodies, images, pixels, queue and time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.buckets import Buckets
from app.layout import NAME, VersionPolicy

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = REPO_ROOT / "models"
DEFAULT_MODEL_DIR = DEFAULT_REPOSITORY / "mnist"  # the shipped model
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

CommaList = Annotated[tuple[str, ...], NoDecode]  # "a,b,c" in the environment, not JSON


class Settings(BaseSettings):
    """Everything the service reads from its environment (prefix `VAE_`)."""

    model_config = SettingsConfigDict(env_prefix="VAE_", frozen=True, protected_namespaces=())

    model_repository: Path = Field(
        default=DEFAULT_REPOSITORY,
        description="folder of models: <name>/<version>/{model.pt,model.json}",
    )
    model_dir: Path | None = Field(
        default=None, description="one artifact folder, served alone instead of the repository"
    )
    models: CommaList = Field(default=(), description="comma-separated models to load; empty = all")
    default_model: str = Field(default="mnist", description="what the top-level routes serve")
    version_policy: str = Field(
        default="latest", description="latest | latest:N | all | specific:V1,V2,..."
    )
    poll_s: float = Field(
        default=0.0, ge=0.0, le=86_400.0, description="seconds between repository scans; 0 = off"
    )
    admin_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), description="comma-separated admin keys; empty = management routes off"
    )
    device: str = Field(
        default="auto", description="auto | cpu | cuda | cuda:N; auto = cuda when present"
    )
    max_batch_size: int = Field(default=64, ge=1, le=4096, description="rows per forward pass")
    max_wait_ms: float = Field(
        default=2.0, ge=0.0, le=1000.0, description="wait for company per batch"
    )
    torch_threads: int = Field(
        default=0, ge=0, le=1024, description="intra-op threads; 0 = torch default"
    )
    batch_invariant: bool = Field(
        default=True,
        description="pad model calls so a row's numbers never depend on its batch",
    )
    max_queue: int = Field(default=1024, ge=1, description="rows waiting for the model before 503")
    request_timeout_ms: int = Field(
        default=10_000, ge=1, le=600_000, description="default deadline"
    )
    drain_timeout_s: float = Field(
        default=20.0, ge=0.0, le=3600.0, description="shutdown drain budget"
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), description="comma-separated API keys; empty = no authentication"
    )
    api_keys_file: Path | None = Field(default=None, description="file with one API key per line")
    cors_origins: CommaList = Field(
        default=(), description="comma-separated origins; empty = CORS off"
    )
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="request body limit")
    # what `app.connections` bounds before a request reaches the app (uvicorn has no knob)
    max_head_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1024 * 1024, description="request line + headers; 431"
    )
    max_headers: int = Field(default=100, ge=8, le=10_000, description="header lines; 431")
    head_timeout_s: float = Field(
        default=10.0, gt=0.0, le=600.0, description="to send a request head, from its first byte"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0.0, le=3600.0, description="to send a request body, after its head"
    )
    max_images: int = Field(default=256, ge=1, le=65_536, description="images per request")
    max_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        le=89_478_485,
        description="pixels per uploaded image (bomb guard)",
    )
    max_samples: int = Field(default=256, ge=1, le=65_536, description="largest n for /sample")
    max_steps: int = Field(
        default=256, ge=2, le=65_536, description="largest steps for /interpolate"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ui: bool = Field(default=True, description="serve the web page at /ui; false turns it off")
    public_docs: bool = Field(
        default=False, description="/docs, /redoc, /openapi.json without a key when keys are set"
    )
    warmup_batch_sizes: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(), description="batch sizes warmed up (and padded to); empty = powers of two"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("version_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        VersionPolicy.parse(value)
        return value

    @field_validator("default_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError("a model name is letters, digits, _ and -")
        return value

    @field_validator("api_keys", "admin_keys", "cors_origins", "models", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("warmup_batch_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        largest = max(self.max_images, self.max_samples, self.max_steps)
        if self.max_queue < largest:
            # a request larger than the whole queue could never be admitted: say so at start-up
            raise ValueError(
                f"max_queue ({self.max_queue}) must hold the largest request ({largest} rows)"
            )
        if any(size < 1 or size > self.max_batch_size for size in self.warmup_batch_sizes):
            raise ValueError(f"warmup_batch_sizes must lie in [1, {self.max_batch_size}]")
        if self.api_keys_file is not None and not read_key_file(self.api_keys_file):
            # an operator who names a key file expects authentication, never an open service
            raise ValueError(f"api_keys_file {self.api_keys_file} holds no key")
        return self

    @property
    def buckets(self) -> Buckets:
        """The batch sizes the model is warmed up at; every batch is padded up to one of them."""
        return Buckets.up_to(self.max_batch_size, self.warmup_batch_sizes)

    @property
    def policy(self) -> VersionPolicy:
        return VersionPolicy.parse(self.version_policy)

    def all_admin_keys(self) -> tuple[str, ...]:
        return tuple(key.get_secret_value() for key in self.admin_keys)

    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from `VAE_API_KEYS` and `VAE_API_KEYS_FILE` together."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            keys += read_key_file(self.api_keys_file)
        return tuple(keys)


def read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"api_keys_file {path} is unreadable: {exc.__class__.__name__}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def describe_error(exc: ValidationError) -> str:
    """A one-line reason naming the environment variable, e.g. for a start-up failure."""
    first = exc.errors()[0]
    field = "_".join(str(part) for part in first["loc"][:1]).upper()
    where = f"VAE_{field}: " if field else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"invalid configuration: {where}{message}"
