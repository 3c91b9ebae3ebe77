"""Request bodies that routes read themselves: JSON, or multipart with image files.

/encode, /anomaly and /interpolate take either body, dispatched on Content-Type, and
both arrive as one validated options model plus the images (base64 `str` from JSON,
`bytes` from uploads); /decode and /sample take JSON only. Any other Content-Type is a
415 on every route; `app.openapi` documents the content types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from app.errors import (
    InvalidJsonError,
    InvalidMultipartError,
    MediaTypeError,
    ServiceError,
    TooManyImagesError,
    body_validation_error,
)

M = TypeVar("M", bound=BaseModel)
MAX_FORM_FIELDS = 16  # the options; images travel as files, which have their own limit


@dataclass(frozen=True)
class ImageBody:
    options: Any  # the validated request model (JSON) or form model (multipart)
    images: list[str | bytes]  # base64 strings from JSON, raw bytes from uploads
    names: list[str]  # how errors refer to each image: "images[0]" or "files[0] (a.png)"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


async def read_json(request: Request, model: type[M]) -> M:
    """Parse the body with orjson (which refuses NaN and Infinity) and validate it."""
    try:
        raw = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidJsonError(f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise body_validation_error(exc) from None


async def read_json_body(request: Request, model: type[M]) -> M:
    """A JSON-only body: any other Content-Type is refused with 415, as on every route."""
    media = media_type(request)
    if not is_json(media):
        raise MediaTypeError(f"Content-Type {media or '(none)'}: send application/json")
    return await read_json(request, model)


async def read_image_body(
    request: Request, json_model: type[BaseModel], form_model: type[BaseModel], max_images: int
) -> ImageBody:
    """JSON `{"images": [...], ...}` or multipart `files=@a.png ...`, at most `max_images`."""
    media = media_type(request)
    if is_json(media):
        options = await read_json(request, json_model)
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
    request: Request, model: type[BaseModel], max_images: int
) -> tuple[BaseModel, list[str | bytes], list[str]]:
    try:
        async with request.form(max_files=max_images, max_fields=MAX_FORM_FIELDS) as form:
            fields: dict[str, Any] = {k: v for k, v in form.multi_items() if k != "files"}
            uploads = form.getlist("files")
            if not all(isinstance(upload, UploadFile) for upload in uploads):
                raise InvalidMultipartError("`files` must be file parts (filename=...)")
            blobs = [await upload.read() for upload in uploads]  # type: ignore[union-attr]
            names = [f"files[{i}] ({upload.filename})" for i, upload in enumerate(uploads)]  # type: ignore[union-attr]
    except ServiceError:
        raise
    except HTTPException as exc:  # Starlette's multipart limits and parse errors
        if str(exc.detail).startswith("Too many files"):
            raise TooManyImagesError(
                f"more than {max_images} files; at most {max_images}"
            ) from None
        raise InvalidMultipartError(f"the multipart body is invalid: {exc.detail}") from None
    try:
        options = model.model_validate({**fields, "files": blobs})
    except ValidationError as exc:
        raise body_validation_error(exc) from None
    return options, list(blobs), names
