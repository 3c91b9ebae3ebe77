"""The in-memory image set and what training does to it: class filter, split, fingerprint.

Every source (see `training.data`) ends as an `ImageSet`: float32 images in [0, 1],
already at the model's size and channel count, so nothing downstream cares where
the pixels came from.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
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
    train, val = hold_out(images, (val_fraction,), seed)
    return train, val


def hold_out(images: ImageSet, fractions: Sequence[float], seed: int) -> list[ImageSet]:
    """Seeded and deterministic: [the rest, then one set per fraction of the images].

    The sets are cut from one permutation in order, so adding a later set (calibration)
    leaves the earlier ones (validation) as they were and takes from the rest.
    """
    count = len(images)
    sizes = [max(1, round(count * fraction)) for fraction in fractions]
    if count - sum(sizes) < 1:
        raise DataError(
            f"{count} image(s) cannot be split into training, validation and calibration sets"
        )
    order = torch.from_numpy(np.random.default_rng(seed).permutation(count))
    edges = np.cumsum([0, *sizes]).tolist()
    held = [images.subset(order[a:b]) for a, b in itertools.pairwise(edges)]
    return [images.subset(order[edges[-1] :]), *held]


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
