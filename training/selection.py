"""Choosing without anomalies: synthetic defects on validation images pick a setting.

Users have normal images only. After training, the spatial model's map smoothing is
chosen by drawing one synthetic defect (`training.defects`, the kinds in turn) on each
validation image and keeping the smoothing whose image score separates the defective
copies from the clean images best (AUROC). The validation split never trains the
weights and is not the calibration split, so the threshold is still set on images
nothing was chosen on.
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
MAP_BATCH = 8


@dataclass(frozen=True)
class Choice:
    sigma: float
    auroc: dict[float, float]  # smoothing -> image AUROC on the synthetic defects


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
def raw_maps(model: SpatialVAE, images: Tensor) -> Tensor:
    """The map head's probabilities before smoothing, (N, 1, H, W)."""
    parts = [torch.sigmoid(model.map_logits(batch)) for batch in images.split(MAP_BATCH)]
    return torch.cat(parts)


def choose_map_sigma(model: SpatialVAE, images: Tensor, seed: int) -> Choice:
    """The smoothing in `SIGMAS` with the best AUROC of clean `images` against defective
    copies; on a tie, the larger (steadier) one."""
    clean = raw_maps(model, images)
    defective = raw_maps(model, with_defects(images, seed))
    table: dict[float, float] = {}
    for sigma in SIGMAS:
        model.map_sigma = sigma
        normal = model.smooth(clean).flatten(1).amax(1)
        anomalous = model.smooth(defective).flatten(1).amax(1)
        table[sigma] = auroc(normal, anomalous)
    best = max(SIGMAS, key=lambda s: (table[s], s))
    model.map_sigma = best
    return Choice(best, table)
