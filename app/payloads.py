"""Request bodies that routes read themselves: JSON, or multipart with image files.

A route declares its body once, as a `BodyFormat`: `json_body(DecodeRequest)` (JSON
only) or `image_body(EncodeRequest, EncodeForm)` (JSON with base64 `images`, or
multipart with the files in `files`). The format reads and validates the body, and
tells `app.openapi` which models and content types to document. Image bodies arrive as
one `ImageBody`: the validated options plus the images (base64 `str` from JSON, `bytes`
from uploads). Any other Content-Type is a 415 on every route. A pydantic error goes
straight to `app.errors.from_validation_errors`, located under `body` as FastAPI would.

Types are strict in JSON: an integer is an integer (not `4.0`, `"4"` or `true`), a
boolean is `true` or `false`, a number is not a string; integers of any size parse, so
one out of range always gets the same message. A form's fields are text, parsed as
numbers and booleans (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`); filenames may
have at most `MAX_FILENAME` characters, a field's text at most `MAX_FIELD_BYTES` (413).

Parsing holds the interpreter lock for a whole call, and 8 MiB of `0,0,0,...` cost
~0.2 s: long enough to stall every connection. So a JSON body may hold at most
`max_values` values (counted by its commas, at C speed, before parsing): what the
largest valid request needs, never more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from app import offload
from app.config import Settings
from app.errors import (
    InvalidJsonError,
    InvalidMultipartError,
    MediaTypeError,
    OutOfRangeError,
    PayloadTooLargeError,
    ServiceError,
    TooManyImagesError,
    from_validation_errors,
)
from app.openapi import request_body

M = TypeVar("M", bound=BaseModel)
J = TypeVar("J", bound=BaseModel)
F = TypeVar("F", bound=BaseModel)
Options = TypeVar("Options")
B = TypeVar("B")
MAX_FORM_FIELDS = 16  # the options; images travel as files, which have their own limit
MAX_FIELD_BYTES = 1024 * 1024  # one option's text, held in memory (Starlette's own default)
MAX_FILENAME = 255  # characters, as most file systems allow
PART_HEAD_BYTES = 4224  # python-multipart's limit on one header line of a part


@dataclass(frozen=True)
class ImageBody(Generic[Options]):
    options: Options  # the validated request model (JSON) or form model (multipart)
    images: list[str | bytes]  # base64 strings from JSON, raw bytes from uploads
    names: list[str]  # how errors refer to each image: "images[0]" or "files[0] (a.png)"


@dataclass(frozen=True)
class BodyFormat(Generic[B]):
    """How one route's body is read, and documented."""

    models: tuple[type[BaseModel], ...]  # the JSON model, then the form model if any
    read: Callable[[Request, Settings, int], Awaitable[B]]  # (request, settings, max_values)

    @property
    def openapi(self) -> dict[str, Any]:
        """The route's `openapi_extra`: its request body and the 415."""
        return request_body(*self.models)


def json_body(model: type[M]) -> BodyFormat[M]:
    """A JSON-only body validated by `model`."""

    async def read(request: Request, settings: Settings, max_values: int) -> M:
        return await read_json_body(request, model, max_values)

    return BodyFormat((model,), read)


def image_body(
    json_model: type[J], form_model: type[F], *, max_images: int | None = None
) -> BodyFormat[ImageBody[J | F]]:
    """JSON `{"images": [...], ...}` or a multipart form with `files`; at most
    `max_images` images (default: `VAE_MAX_IMAGES`)."""

    async def read(request: Request, settings: Settings, max_values: int) -> ImageBody[J | F]:
        limit = settings.max_images if max_images is None else max_images
        return await read_image_body(request, json_model, form_model, limit, max_values)

    return BodyFormat((json_model, form_model), read)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def validate(model: type[M], raw: object) -> M:
    """`model` from form fields; a 422 naming the first bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> ServiceError:
    return from_validation_errors([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])


def max_json_values(max_images: int, latent_dim: int) -> int:
    """Values in the largest valid body: `max_images` latents (or images, each with a
    data-URL comma), plus the options."""
    return max_images * (latent_dim + 2) + 64


async def read_json(request: Request, model: type[M], max_values: int) -> M:
    """Parse and validate the body, strictly (see above), off the loop when large."""
    body = await request.body()
    if body.count(b",") >= max_values:
        raise PayloadTooLargeError(
            f"the JSON body holds more than {max_values} values; no valid request needs more"
        )
    return await offload.run(len(body) <= offload.INLINE_JSON_BYTES, _parse, body, model)


def _parse(body: bytes, model: type[M]) -> M:
    """pydantic's own JSON parser: integers of any size (up to 4,300 digits) stay integers,
    NaN and Infinity are not JSON; then strict validation."""
    try:
        raw = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        if str(exc).startswith("number out of range"):
            raise OutOfRangeError(f"body: a {exc}") from None
        raise InvalidJsonError(f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(raw, strict=True)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "finite_number":  # only a literal like 1e999 overflows
            where = ".".join(str(part) for part in ("body", *exc.errors()[0]["loc"]))
            raise InvalidJsonError(f"{where}: the number is too large for a float") from None
        raise _invalid(exc) from None


async def read_json_body(request: Request, model: type[M], max_values: int) -> M:
    """A JSON-only body: any other Content-Type is refused with 415, as on every route."""
    media = media_type(request)
    if not is_json(media):
        raise MediaTypeError(f"Content-Type {media or '(none)'}: send application/json")
    return await read_json(request, model, max_values)


async def read_image_body(
    request: Request, json_model: type[J], form_model: type[F], max_images: int, max_values: int
) -> ImageBody[J | F]:
    """JSON `{"images": [...], ...}` or multipart `files=@a.png ...`, at most `max_images`."""
    media = media_type(request)
    options: J | F
    if is_json(media):
        options = await read_json(request, json_model, max_values)
        images: list[str | bytes] = list(getattr(options, "images", None) or [])
        names = [f"images[{i}]" for i in range(len(images))]
    elif media == "multipart/form-data":
        options, images, names = await _read_form(request, form_model, max_images)
    else:
        raise MediaTypeError(
            f"Content-Type {media or '(none)'}: send application/json or multipart/form-data"
        )
    if len(images) > max_images:
        raise TooManyImagesError(f"{len(images)} images; at most {max_images} per request")
    return ImageBody(options, images, names)


async def _read_form(
    request: Request, model: type[F], max_images: int
) -> tuple[F, list[str | bytes], list[str]]:
    try:
        async with request.form(
            max_files=max_images, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
        ) as form:
            fields: dict[str, Any] = {k: v for k, v in form.multi_items() if k != "files"}
            uploads = form.getlist("files")
            if not all(isinstance(upload, UploadFile) for upload in uploads):
                raise InvalidMultipartError("`files` must be file parts (filename=...)")
            names = _file_names(uploads)  # type: ignore[arg-type]
            blobs = [await upload.read() for upload in uploads]  # type: ignore[union-attr]
    except ServiceError:
        raise
    except HTTPException as exc:  # Starlette's multipart limits and parse errors
        if str(exc.detail).startswith("Too many files"):
            raise TooManyImagesError(
                f"more than {max_images} files; at most {max_images}"
            ) from None
        if str(exc.detail).startswith("Part exceeded maximum size"):
            raise PayloadTooLargeError(
                f"a form field is larger than {MAX_FIELD_BYTES // 1024} KiB: options are short "
                "text, images travel as files (`files`)"
            ) from None
        if "Maximum header size exceeded" in _causes(exc):
            raise InvalidMultipartError(
                f"a part's header line is longer than {PART_HEAD_BYTES} bytes: "
                f"filenames may have at most {MAX_FILENAME} characters"
            ) from None
        raise InvalidMultipartError(f"the multipart body is invalid: {exc.detail}") from None
    return validate(model, {**fields, "files": blobs}), list(blobs), names


def _file_names(uploads: list[UploadFile]) -> list[str]:
    """How errors name each file: `files[0] (a.png)`; a 422 for an over-long filename."""
    for index, upload in enumerate(uploads):
        if len(upload.filename or "") > MAX_FILENAME:
            raise InvalidMultipartError(
                f"files[{index}]: the filename has {len(upload.filename or '')} characters; "
                f"at most {MAX_FILENAME}"
            )
    return [f"files[{i}] ({upload.filename})" for i, upload in enumerate(uploads)]


def _causes(exc: BaseException) -> str:
    """The messages of `exc` and of every exception it was raised from, as one string."""
    messages: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        messages.append(str(current))
        current = current.__cause__ or current.__context__
    return " / ".join(messages)
