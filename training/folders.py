"""Labelled image sets on disk, in the layout public inspection data ships in (MVTec AD):

    DIR/train/good/*            normal images to train on
    DIR/test/good/*             normal test images
    DIR/test/<kind>/*           defective test images, a folder per kind of defect
    DIR/ground_truth/<kind>/<stem>_mask.png   a defect's pixels, white on black

An operator's own labelled images go in this layout to be measured through the service
(`python -m training.evaluate served`); `write_set` writes the built-in benchmark sets in
it, so that the same round trip (train on files, serve, upload, measure) runs here on data
that is in the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from training.errors import TrainingError
from training.textures import TextureSet

GOOD = "good"
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Case:
    """One test image: its file, its kind (`good` or a defect's folder), its mask file."""

    path: Path
    kind: str
    mask: Path | None = None  # None for good images, and for defects shipped without one


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def labelled_cases(root: Path) -> list[Case]:
    """Every test image under `root/test`, good ones first, each defect with its mask."""
    test = root / "test"
    if not (test / GOOD).is_dir():
        raise TrainingError(f"{root}: no test/{GOOD} folder (expected the MVTec AD layout)")
    cases = [Case(path, GOOD) for path in image_files(test / GOOD)]
    kinds = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != GOOD)
    for kind in kinds:
        for path in image_files(test / kind):
            mask = root / "ground_truth" / kind / f"{path.stem}_mask.png"
            cases.append(Case(path, kind, mask if mask.is_file() else None))
    if not any(case.kind == GOOD for case in cases):
        raise TrainingError(f"{test / GOOD}: no images")
    if len(kinds) == 0 or all(case.kind == GOOD for case in cases):
        raise TrainingError(f"{test}: no defective images (a folder per kind beside {GOOD}/)")
    return cases


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file as (H, W) bool at `size` (width, height): any non-black pixel is defect."""
    try:
        with Image.open(path) as image:
            grey = image.convert("L")
            if grey.size != size:
                grey = grey.resize(size, Image.Resampling.NEAREST)
            return np.asarray(grey) > 0
    except OSError as exc:
        raise TrainingError(f"{path}: not a readable mask image ({exc})") from None


def write_set(root: Path, data: TextureSet) -> dict[str, int]:
    """`data` as files under `root` in the layout above: its training images as
    train/good, its normal test images as test/good, each defect under its kind with its
    mask. Returns how many files went where."""
    if (root / "train").exists() or (root / "test").exists():
        raise TrainingError(f"{root}: already holds a set (train/ or test/); pick a new folder")
    counts = {
        "train/good": _write_images(root / "train" / GOOD, data.train, "train"),
        "test/good": _write_images(root / "test" / GOOD, data.normal, "good"),
    }
    kinds = np.array(data.kinds)
    for kind in dict.fromkeys(data.kinds):
        chosen = np.flatnonzero(kinds == kind)
        counts[f"test/{kind}"] = _write_images(
            root / "test" / kind, data.defective[chosen], kind, data.masks[chosen], root
        )
    return counts


def _write_images(
    folder: Path,
    images: Tensor,
    stem: str,
    masks: Tensor | None = None,
    root: Path | None = None,
) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        name = f"{stem}_{index:04d}"
        _png(image).save(folder / f"{name}.png")
        if masks is not None and root is not None:
            masks_dir = root / "ground_truth" / folder.name
            masks_dir.mkdir(parents=True, exist_ok=True)
            pixels = masks[index].numpy().astype(np.uint8) * 255
            Image.fromarray(pixels).save(masks_dir / f"{name}_mask.png")
    return len(images)


def _png(image: Tensor) -> Image.Image:
    """(C, H, W) in [0, 1] as an 8-bit L or RGB image; the sets are already on 8 bits."""
    pixels = np.round(image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
