"""Choosing without anomalies: synthetic defects on validation images pick a setting.

Users have normal images only. After training, the spatial model's map is put together
on the validation split: one synthetic defect (`training.defects`, the kinds in turn) is
drawn on each validation image, and the setting whose image score separates the
defective copies from the clean images best (AUROC) is kept: the smoothing, and how
much of the map comes from the map head and how much from the patch density
(`training.density`), each map first scaled so that a clean image's typical peak is 1.
The validation split never trains the weights and is not the calibration split, so the
threshold is still set on images nothing was chosen on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from training.defects import KINDS, draw_defect
from training.roc import auroc
from training.spatial import SpatialVAE

SIGMAS = (1.0, 2.0, 4.0, 8.0)  # px at the working resolution
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # the patch density's share of the map
MAP_BATCH = 8


@dataclass(frozen=True)
class Scale:
    """An affine map that puts clean images' mean pixel at 0 and their mean peak at 1."""

    centre: float
    scale: float

    @classmethod
    def of(cls, clean: Tensor) -> Scale:
        centre = float(clean.mean())
        peak = float(clean.flatten(1).amax(1).mean())
        return cls(centre, max(peak - centre, 1e-12))

    def __call__(self, maps: Tensor) -> Tensor:
        return (maps - self.centre) / self.scale


@dataclass(frozen=True)
class Choice:
    sigma: float
    share: float
    head: Scale
    density: Scale
    auroc: dict[tuple[float, float], float]  # (smoothing, share) -> AUROC on synthetic defects

    def apply(self, model: SpatialVAE) -> SpatialVAE:
        model.map_sigma = self.sigma
        model.density_share = self.share
        model.head_centre, model.head_scale = self.head.centre, self.head.scale
        model.density_centre, model.density_scale = self.density.centre, self.density.scale
        return model


@dataclass(frozen=True)
class Maps:
    head: Tensor  # (N, 1, H, W), unsmoothed
    density: Tensor


def with_defects(images: Tensor, seed: int) -> Tensor:
    """Each image (N, C, H, W) in [0, 1] with one synthetic defect, kinds in turn."""
    rng = np.random.default_rng(seed)
    pixels = images.permute(0, 2, 3, 1).numpy()
    drawn = [
        draw_defect(image, KINDS[index % len(KINDS)], rng, donor=pixels[index - 1]).image
        for index, image in enumerate(pixels)
    ]
    return torch.from_numpy(np.stack(drawn)).permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def raw_maps(model: SpatialVAE, images: Tensor) -> Maps:
    """Both maps of `images`, before smoothing."""
    heads, densities = [], []
    for batch in images.split(MAP_BATCH):
        heads.append(model.head_map(batch))
        densities.append(model.density(batch))
    return Maps(torch.cat(heads), torch.cat(densities))


def choose_map(
    model: SpatialVAE, images: Tensor, seed: int, sigmas: tuple[float, ...] = SIGMAS
) -> Choice:
    """The smoothing in `sigmas` and the share in `SHARES` with the best AUROC of clean
    `images` against defective copies, applied to `model`; on a tie, the larger (steadier)
    smoothing and the more even mix."""
    clean = raw_maps(model, images)
    defective = raw_maps(model, with_defects(images, seed))
    table: dict[tuple[float, float], float] = {}
    scales: dict[float, tuple[Scale, Scale]] = {}
    for sigma in sigmas:
        model.map_sigma = sigma
        smooth_clean = Maps(model.smooth(clean.head), model.smooth(clean.density))
        smooth_defective = Maps(model.smooth(defective.head), model.smooth(defective.density))
        head, density = Scale.of(smooth_clean.head), Scale.of(smooth_clean.density)
        scales[sigma] = (head, density)
        for share in SHARES:
            normal = _peaks(smooth_clean, head, density, share)
            anomalous = _peaks(smooth_defective, head, density, share)
            table[(sigma, share)] = auroc(normal, anomalous)
    sigma, share = max(table, key=lambda key: (table[key], key[0], -abs(key[1] - 0.5)))
    choice = Choice(sigma, share, *scales[sigma], table)
    choice.apply(model)
    return choice


def _peaks(maps: Maps, head: Scale, density: Scale, share: float) -> Tensor:
    mixed = (1.0 - share) * head(maps.head) + share * density(maps.density)
    return mixed.flatten(1).amax(1)
