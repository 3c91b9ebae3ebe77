"""The in-memory image set and what training does to it: class filter, split, fingerprint.

Every source (see `training.data`) ends as an `ImageSet`: float32 images in [0, 1],
already at the model's size and channel count, so nothing downstream cares where
the pixels came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from training.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    images: Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: Tensor | None = None  # (N,) int64; None when the source has no labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: Tensor) -> ImageSet:
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.images[index], labels)


def select_classes(images: ImageSet, classes: tuple[int, ...]) -> ImageSet:
    """Keep the images whose label is in `classes`: training on 'normal' data only."""
    if images.labels is None:
        raise DataError("--classes needs labels, and this data set has none")
    keep = torch.isin(images.labels, torch.tensor(classes, dtype=images.labels.dtype))
    if not bool(keep.any()):
        present = sorted({int(v) for v in images.labels.unique()})
        raise DataError(f"--classes {_join(classes)} matches no image (labels present: {present})")
    return images.subset(keep.nonzero().squeeze(1))


def split(images: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Seeded, deterministic train/validation split: the same seed gives the same sets."""
    count = len(images)
    val_count = max(1, round(count * val_fraction))
    if count - val_count < 1:
        raise DataError(f"{count} image(s) cannot be split into training and validation sets")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(count))
    return images.subset(order[val_count:]), images.subset(order[:val_count])


def fingerprint(images: ImageSet) -> str:
    """sha256 of the pixels, shape and labels: which data an artifact was trained on."""
    digest = hashlib.sha256()
    digest.update(repr(tuple(images.images.shape)).encode())
    digest.update(images.images.detach().cpu().contiguous().numpy().tobytes())
    if images.labels is None:
        digest.update(b"no labels")
    else:
        digest.update(images.labels.detach().cpu().to(torch.int64).numpy().tobytes())
    return digest.hexdigest()


def _join(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)
