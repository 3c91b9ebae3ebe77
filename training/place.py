"""A density of normal pixels per place: what belongs where, for parts in a fixture.

The patch density (`training.density`) is shared by every position: a surface's
statistics do not depend on where a crop was cut. A camera over a fixture sees the same
part in nearly the same place every time, and there a bright patch that would be
normal anywhere on the part is a defect where the part is dark. So each pixel of the
working size gets its own Gaussian, the training images' mean and spread at that place
(channels independent: PaDiM's per-position density, Defard et al. 2020, of raw pixels
in place of a pretrained network's features), and the evidence is the squared
standardised distance summed over channels. The spread is floored at a share of its
mean over the image, so that a place that never changes (a black border, a saturated
highlight) does not turn a little noise there into a defect.

Where the images are not aligned (random crops of a surface, a part turned any way),
the mean is about the same everywhere and the evidence says little; the validation
choice (`training.selection`) then gives it no share, and a map without a share is not
computed. The evidence exists at the fitted size only, which is the exported size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FLOOR = 0.25  # of the mean spread: the least spread a place is given
FIT_BATCH = 64


class PlaceDensity(nn.Module):
    """Per pixel, one channel: the squared standardised distance to that place's mean.

    Until `fit_place_density` fills it, the mean is 0 and the scale is 0 at one place
    that broadcasts to any size: every distance is 0. Its tensors are buffers outside
    the state dict, fitted from the training images and exported with the artifact.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels, 1, 1), False)
        self.register_buffer("inverse_spread", torch.zeros(channels, 1, 1), False)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, 1, H, W)
        mean: Tensor = self.mean  # type: ignore[assignment]
        inverse: Tensor = self.inverse_spread  # type: ignore[assignment]
        return ((x - mean) * inverse).pow(2).sum(1, keepdim=True)


@torch.no_grad()
def fit_place_density(density: PlaceDensity, images: Tensor) -> PlaceDensity:
    """Fill `density` with the mean and spread per place of `images` (N, C, H, W), all
    of one size (the working size), in a batch of images at a time (float64 sums)."""
    if len(images) < 2:
        raise ValueError("fitting a density per place needs at least 2 images")
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for batch in images.split(FIT_BATCH):
        total += batch.double().sum(0)
        squares += batch.double().pow(2).sum(0)
    mean = total / len(images)
    variance = ((squares - len(images) * mean * mean) / (len(images) - 1)).clamp(min=0.0)
    spread = variance.sqrt()
    floor = FLOOR * spread.mean(dim=(1, 2), keepdim=True).clamp(min=1e-3)
    density.mean = mean.float()
    density.inverse_spread = (1.0 / torch.maximum(spread, floor)).float()
    return density
