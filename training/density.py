"""A density of normal patches: how unusual each small patch of an image is.

The map head (`training.spatial`) sees where an image and its reconstruction disagree,
so it misses what the VAE reconstructs well: a thin line drawn in the texture's own
grey, a colour that belongs nowhere. A Gaussian density of raw 8x8 patches, fitted on
the training images (shared by every position: a surface's statistics do not depend on
where a crop was cut), catches those; its -log density per patch, up to a constant, is
the Mahalanobis distance of the patch to the mean normal patch. It is a linear-Gaussian
latent model of patches (probabilistic PCA with every component kept) and the whole
of the fit is a mean and a covariance.

Evaluated as a convolution: whitening W (W^T W = the inverse covariance) is a conv
with one output channel per patch dimension, so the squared distance is the sum of
squares over its channels. No fixed image size; at the exported size and every other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

PATCH = 8  # px at the working resolution: a crack 1-2 px wide fills a good share of it
STEP = 4  # px between patches
SHRINK = 1e-3  # ridge on the covariance, relative to its mean variance: flat data stays finite
MAX_PATCHES = 1_000_000  # the fit's sample of patches: the covariance is steady long before
FIT_BATCH = 16


class PatchDensity(nn.Module):
    """Squared Mahalanobis distance of each patch to the normal patches, per pixel.

    Until `fit_patch_density` fills it, the whitening is zero: every distance is 0.
    Its tensors are buffers outside the state dict: they are fitted after training from
    the training images, never trained, and travel in the exported artifact.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        dims = channels * PATCH * PATCH
        self.register_buffer("weight", torch.zeros(dims, channels, PATCH, PATCH), False)
        self.register_buffer("bias", torch.zeros(dims), False)
        self.patch = PATCH
        self.step = STEP

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, 1, H, W)
        """Each patch's distance spread over the STEP x STEP square at its centre; the
        margin no whole patch is centred on repeats its neighbour (never a patch made
        of mirrored pixels, which no training patch was)."""
        whitened = F.conv2d(x, self.weight, self.bias, stride=self.step)  # type: ignore[arg-type]
        distance = whitened.pow(2).sum(1, keepdim=True)
        reach = self.patch - self.step
        inner = [x.shape[2] - reach, x.shape[3] - reach]
        spread = F.interpolate(distance, size=inner, mode="bilinear")
        margin = reach // 2
        return F.pad(spread, [margin, margin, margin, margin], mode="replicate")


def patch_moments(images: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Mean (D,) and covariance (D, D), in float64, of patches of `images` (N, C, H, W)
    at every position, or a random sample of `MAX_PATCHES` of them."""
    per_image = _positions(images.shape[2]) * _positions(images.shape[3])
    keep = min(1.0, MAX_PATCHES / max(1, per_image * len(images)))
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros((), dtype=torch.float64)
    first: Tensor | None = None
    second: Tensor | None = None
    for batch in images.split(FIT_BATCH):
        columns = F.unfold(batch.double(), PATCH, stride=STEP)  # (n, D, P)
        rows = columns.permute(0, 2, 1).reshape(-1, columns.shape[1])
        if keep < 1.0:
            rows = rows[torch.rand(len(rows), generator=generator) < keep]
        first = rows.sum(0) if first is None else first + rows.sum(0)
        second = rows.T @ rows if second is None else second + rows.T @ rows
        total = total + len(rows)
    if first is None or second is None or total < 2:
        raise ValueError("fitting a patch density needs images of at least 8x8 pixels")
    mean = first / total
    covariance = (second - total * torch.outer(mean, mean)) / (total - 1)
    return mean, covariance


def fit_patch_density(density: PatchDensity, images: Tensor, seed: int = 0) -> PatchDensity:
    """Fill `density` with the Gaussian of the patches of `images` (N, C, H, W) in [0, 1]."""
    mean, covariance = patch_moments(images, seed)
    ridge = SHRINK * float(covariance.diagonal().mean().clamp(min=1e-12))
    covariance = covariance + ridge * torch.eye(len(mean), dtype=torch.float64)
    whitening = torch.linalg.inv(torch.linalg.cholesky(covariance))  # W^T W = covariance^-1
    channels = int(density.weight.shape[1])  # type: ignore[index]
    density.weight = whitening.view(-1, channels, PATCH, PATCH).float()
    density.bias = (-whitening @ mean).float()
    return density


def _positions(side: int) -> int:
    return max(0, (side - PATCH) // STEP + 1)
