"""Choosing without anomalies: synthetic defects on validation images pick a setting.

Users have normal images only. After training, the spatial model's map is put together
on the validation split: one synthetic defect (`training.defects`, the kinds in turn) is
drawn on each validation image, and the setting whose image score separates the
defective copies from the clean images best (AUROC) is kept: the smoothing, and how
much of the map comes from the map head, how much from the patch density's rare and
plain evidence (`training.density`) and how much from the density per place
(`training.place`), each map first scaled so that a clean image's typical peak is 1.
Where several settings separate them equally (all of them, on a steady part), the one
whose map points at the defects best (pixel AUROC on the defects' masks) is kept.
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
STEPS = 4  # shares in quarters
# (rare, plain, place) shares of the map; the map head has the rest
SHARES = tuple(
    (rare / STEPS, plain / STEPS, place / STEPS)
    for rare in range(STEPS + 1)
    for plain in range(STEPS + 1 - rare)
    for place in range(STEPS + 1 - rare - plain)
)
Share = tuple[float, float, float]
MAP_BATCH = 8
# validation pixels a map may hold: eight maps and their smoothed copies stay near 3 GB
SELECTION_PIXELS = 3 << 24
POINTING_PIXELS = 1 << 20


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
class Scales:
    head: Scale
    rare: Scale
    plain: Scale
    place: Scale


@dataclass(frozen=True)
class Choice:
    sigma: float
    share: Share  # (rare, plain, place)
    scales: Scales
    auroc: dict[tuple[float, Share], float]  # (smoothing, share) -> AUROC, synthetic defects

    def apply(self, model: SpatialVAE) -> SpatialVAE:
        model.map_sigma = self.sigma
        model.rare_share, model.plain_share, model.place_share = self.share
        model.head_centre, model.head_scale = self.scales.head.centre, self.scales.head.scale
        model.rare_centre, model.rare_scale = self.scales.rare.centre, self.scales.rare.scale
        model.plain_centre, model.plain_scale = self.scales.plain.centre, self.scales.plain.scale
        model.place_centre, model.place_scale = self.scales.place.centre, self.scales.place.scale
        return model

    @property
    def best(self) -> float:
        return self.auroc[(self.sigma, self.share)]


@dataclass(frozen=True)
class Maps:
    head: Tensor  # (N, 1, H, W), unsmoothed
    density: Tensor  # (N, 2, H, W): rare, plain
    place: Tensor  # (N, 1, H, W)

    def smoothed(self, model: SpatialVAE) -> Maps:
        rare, plain = self.density.split(1, dim=1)
        density = torch.cat([model.smooth(rare), model.smooth(plain)], dim=1)
        return Maps(model.smooth(self.head), density, model.smooth(self.place))

    def scales(self) -> Scales:
        rare, plain = self.density.split(1, dim=1)
        return Scales(Scale.of(self.head), Scale.of(rare), Scale.of(plain), Scale.of(self.place))

    def peaks(self, model: SpatialVAE) -> Tensor:
        """The image scores of these (smoothed) maps as mixed by `model`."""
        return model.mix(self.head, self.density, self.place).flatten(1).amax(1)


def with_defects(images: Tensor, seed: int) -> Tensor:
    """Each image (N, C, H, W) in [0, 1] with one synthetic defect, kinds in turn."""
    return drawn_defects(images, seed)[0]


def drawn_defects(images: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """`with_defects`, and each defect's mask (N, H, W), True where it changed a pixel."""
    rng = np.random.default_rng(seed)
    pixels = images.permute(0, 2, 3, 1).numpy()
    drawn = [
        draw_defect(image, KINDS[index % len(KINDS)], rng, donor=pixels[index - 1])
        for index, image in enumerate(pixels)
    ]
    defective = torch.from_numpy(np.stack([d.image for d in drawn])).permute(0, 3, 1, 2)
    return defective.contiguous(), torch.from_numpy(np.stack([d.mask for d in drawn]))


@torch.inference_mode()
def raw_maps(model: SpatialVAE, images: Tensor) -> Maps:
    """The four maps of `images`, before smoothing."""
    heads, densities, places = [], [], []
    for batch in images.split(MAP_BATCH):
        heads.append(model.head_map(batch))
        densities.append(model.density(batch))
        places.append(model.place(batch))
    return Maps(torch.cat(heads), torch.cat(densities), torch.cat(places))


def choose_map(
    model: SpatialVAE, images: Tensor, seed: int, sigmas: tuple[float, ...] = SIGMAS
) -> Choice:
    """The smoothing in `sigmas` and the shares in `SHARES` with the best AUROC of clean
    `images` against defective copies, applied to `model`; on a tie, the map that points
    at the defects best (`_pointing`), then the larger (steadier) smoothing and the more
    even mix. Large images are chosen on as many of `images` as
    `SELECTION_PIXELS` allows."""
    images = images[: max(2, SELECTION_PIXELS // (images.shape[2] * images.shape[3]))]
    clean = raw_maps(model, images)
    defective_images, masks = drawn_defects(images, seed)
    defective = raw_maps(model, defective_images)
    table: dict[tuple[float, Share], float] = {}
    scales: dict[float, Scales] = {}
    for sigma in sigmas:
        model.map_sigma = sigma
        smooth_clean, smooth_defective = clean.smoothed(model), defective.smoothed(model)
        scales[sigma] = smooth_clean.scales()
        for share in SHARES:
            Choice(sigma, share, scales[sigma], table).apply(model)
            normal, anomalous = smooth_clean.peaks(model), smooth_defective.peaks(model)
            table[(sigma, share)] = auroc(normal, anomalous)
    top = max(table.values())
    tied = [key for key, value in table.items() if value == top]
    pointing = _pointing(model, defective, masks, tied, scales) if len(tied) > 1 else {}
    sigma, share = max(tied, key=lambda key: (pointing.get(key, 0.0), key[0], -_largest(key[1])))
    choice = Choice(sigma, share, scales[sigma], table)
    choice.apply(model)
    return choice


def _pointing(
    model: SpatialVAE,
    defective: Maps,
    masks: Tensor,
    keys: list[tuple[float, Share]],
    scales: dict[float, Scales],
) -> dict[tuple[float, Share], float]:
    """For settings whose image scores tie (a validation set every one of them
    separates), how well each one's map points at the defects: the pixel AUROC of the
    defective copies' maps against the masks, on every second pixel each way. A map
    smoothed past a thin defect's width can still flag the image, but not show where."""
    inside = masks[:, ::2, ::2].flatten()
    chosen = _pixel_sample(len(inside))
    inside = inside[chosen]
    pointing = {}
    for sigma in sorted({key[0] for key in keys}):
        model.map_sigma = sigma
        smooth = defective.smoothed(model)
        # the mix is per pixel: mixing the sampled pixels alone gives the same values
        head, density, place = (
            _sampled(m, chosen) for m in (smooth.head, smooth.density, smooth.place)
        )
        for key in (key for key in keys if key[0] == sigma):
            Choice(sigma, key[1], scales[sigma], {}).apply(model)
            flat = model.mix(head, density, place).flatten()
            pointing[key] = auroc(flat[~inside], flat[inside])
    return pointing


def _pixel_sample(count: int) -> Tensor:
    """Which of `count` pixels the pointing is measured on: all, or a fixed random
    POINTING_PIXELS of them (ranking millions of pixels for each tied setting cost
    minutes on large images; the AUROC of a sample of a million moves by about 0.1%)."""
    if count <= POINTING_PIXELS:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(0))[:POINTING_PIXELS]


def _sampled(maps: Tensor, chosen: Tensor) -> Tensor:
    """(N, C, H, W) maps on every second pixel each way, the `chosen` of them: (M, C, 1, 1)."""
    grid = maps[:, :, ::2, ::2].permute(0, 2, 3, 1).reshape(-1, maps.shape[1])
    return grid[chosen][:, :, None, None]


def _largest(share: Share) -> float:
    return max(*share, 1.0 - sum(share))
