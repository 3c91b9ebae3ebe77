"""A density of normal patches: how unusual each small patch of an image is.

The map head (`training.spatial`) sees where an image and its reconstruction disagree,
so it misses what the VAE reconstructs well: a thin line drawn in the texture's own
grey, a colour that belongs nowhere. A Gaussian density of raw 8x8 patches, fitted on
the training images (shared by every position: a surface's statistics do not depend on
where a crop was cut), catches those; its -log density per patch, up to a constant, is
the Mahalanobis distance of the patch to the mean normal patch. It is a linear-Gaussian
latent model of patches (probabilistic PCA with every component kept) and the whole
of the fit is a mean and a covariance.

Two kinds of evidence come out of one distance. *Rare*: the distance itself, large for a
patch unlike the normal ones. *Plain*: how much nearer to the mean the patch is than
normal patches are, as -log of the share of training patches nearer still. A flat grey
disk where grass should be, a smeared or missing region, lies close to the mean patch
(a Gaussian's most likely point is its mean, while its typical patches lie on a shell
around it: Nalisnick et al. 2019 on typicality); the share is measured on the training
patches, so surfaces whose normal patches are often flat do not raise it.

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
LEVELS = 1001  # quantiles of the training patches' log distance, for the plain evidence


class PatchDensity(nn.Module):
    """Per pixel, two channels: the rare and the plain evidence of the patches there.

    Until `fit_patch_density` fills it, the whitening is zero: every distance is 0.
    Its tensors are buffers outside the state dict: they are fitted after training from
    the training images, never trained, and travel in the exported artifact.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        dims = channels * PATCH * PATCH
        self.register_buffer("weight", torch.zeros(dims, channels, PATCH, PATCH), False)
        self.register_buffer("bias", torch.zeros(dims), False)
        self.register_buffer("levels", torch.zeros(LEVELS), False)  # sorted log distances
        self.patch = PATCH
        self.step = STEP

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, 2, H, W)
        """Each patch's evidence spread over the STEP x STEP square at its centre; the
        margin no whole patch is centred on repeats its neighbour (never a patch made
        of mirrored pixels, which no training patch was)."""
        distance = self.distances(x)
        evidence = torch.cat([distance, self.plainness(distance)], dim=1)
        reach = self.patch - self.step
        inner = [x.shape[2] - reach, x.shape[3] - reach]
        spread = F.interpolate(evidence, size=inner, mode="bilinear")
        margin = reach // 2
        return F.pad(spread, [margin, margin, margin, margin], mode="replicate")

    def distances(self, x: Tensor) -> Tensor:
        """Squared Mahalanobis distance of each patch, (N, 1, h, w) on the patch grid."""
        whitened = F.conv2d(x, self.weight, self.bias, stride=self.step)  # type: ignore[arg-type]
        return whitened.pow(2).sum(1, keepdim=True)

    def plainness(self, distance: Tensor) -> Tensor:
        """-log of the share of training patches nearer the mean than each patch, and
        beyond the nearest of them, further by how much nearer still (in log distance),
        so that it keeps rising."""
        levels: Tensor = self.levels  # type: ignore[assignment]
        log_distance = distance.clamp(min=1e-12).log()
        count = levels.shape[0]
        nearer = torch.bucketize(log_distance, levels).to(distance.dtype) / count
        beyond = (levels[0] - log_distance).clamp(min=0.0)
        return -nearer.clamp(min=0.5 / count).log() + beyond


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
    density.levels = _levels(density, images, seed)
    return density


@torch.no_grad()
def _levels(density: PatchDensity, images: Tensor, seed: int) -> Tensor:
    """`LEVELS` quantiles of the log distance of the training patches: of every patch of
    as many images, drawn at random, as hold `MAX_PATCHES` of them (a distance costs a
    whitening of D channels, which 1,200 large colour images would make minutes)."""
    generator = torch.Generator().manual_seed(seed + 1)
    per_image = max(1, _positions(images.shape[2]) * _positions(images.shape[3]))
    count = min(len(images), -(-MAX_PATCHES // per_image))
    chosen = images[torch.randperm(len(images), generator=generator)[:count]]
    logs = torch.cat([density.distances(b).flatten() for b in chosen.split(FIT_BATCH)])
    quantiles = torch.linspace(0.0, 1.0, LEVELS, dtype=torch.float64)
    return torch.quantile(logs.clamp(min=1e-12).log().double(), quantiles).float()


def _positions(side: int) -> int:
    return max(0, (side - PATCH) // STEP + 1)
