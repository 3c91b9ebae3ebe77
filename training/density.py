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

The rare evidence comes from a mixture of such Gaussians (the patch prior of Zoran and
Weiss, ICCV 2011, "From learning models of natural image patches to whole image
restoration"): one Gaussian puts a surface with two kinds of patch (bricks and mortar, a
part and the table under it) into one ellipsoid, in which a patch that is neither lies
as near the middle as both do. Each component is one more whitening, so the mixture is
one convolution with a block of channels per component; its -2 log density is offset
so that it is never negative and, with one component, is the squared distance itself.
The plain evidence stays with the one Gaussian: typicality is a statement about a
Gaussian's shell, and the one Gaussian's mean is what "flat" means for the surface.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

PATCH = 8  # px at the working resolution: a crack 1-2 px wide fills a good share of it
STEP = 4  # px between patches
SHRINK = 1e-3  # ridge on the covariance, relative to its mean variance: flat data stays finite
MAX_PATCHES = 1_000_000  # the fit's sample of patches: the covariance is steady long before
FIT_BATCH = 16
LEVELS = 1001  # quantiles of the training patches' log distance, for the plain evidence
COMPONENTS = 16  # Gaussians in the mixture of patches, at most
MIXTURE_CHANNELS = 1536  # the mixture convolution's width: 8 components for colour patches
MIXTURE_PATCHES = 100_000  # the mixture's sample: 1,500 patches a component or more
EM_STEPS = 30


class PatchDensity(nn.Module):
    """Per pixel, two channels: the rare and the plain evidence of the patches there.

    Until `fit_patch_density` fills it, the whitening is zero: every distance is 0.
    Its tensors are buffers outside the state dict: they are fitted (before training) from
    the training images, never trained, and travel in the exported artifact.
    """

    def __init__(self, channels: int, components: int | None = None) -> None:
        super().__init__()
        dims = channels * PATCH * PATCH
        components = components or max(1, min(COMPONENTS, MIXTURE_CHANNELS // dims))
        self.register_buffer("weight", torch.zeros(dims, channels, PATCH, PATCH), False)
        self.register_buffer("bias", torch.zeros(dims), False)
        self.register_buffer("levels", torch.zeros(LEVELS), False)  # sorted log distances
        # the mixture: a whitening per component, stacked, and log weight - log det / 2,
        # shifted so that the weights' exponentials sum to 1 (unfitted: all equal)
        shape = (components * dims, channels, PATCH, PATCH)
        self.register_buffer("mixture_weight", torch.zeros(shape), False)
        self.register_buffer("mixture_bias", torch.zeros(components * dims), False)
        offsets = torch.full((components,), -math.log(components))
        self.register_buffer("mixture_offset", offsets, False)
        self.components = components
        self.patch = PATCH
        self.step = STEP

    def forward(self, x: Tensor, rare: bool = True) -> Tensor:  # (N, C, H, W) -> (N, 2, H, W)
        """Each patch's evidence spread over the STEP x STEP square at its centre; the
        margin no whole patch is centred on repeats its neighbour (never a patch made
        of mirrored pixels, which no training patch was). With `rare` false the rare
        channel is 0: the mixture is most of the cost, and a map without a share for it
        need not pay it."""
        plain = self.plainness(self.distances(x))
        rarity = self.rarity(x) if rare else torch.zeros_like(plain)
        evidence = torch.cat([rarity, plain], dim=1)
        reach = self.patch - self.step
        inner = [x.shape[2] - reach, x.shape[3] - reach]
        spread = F.interpolate(evidence, size=inner, mode="bilinear")
        margin = reach // 2
        return F.pad(spread, [margin, margin, margin, margin], mode="replicate")

    def distances(self, x: Tensor) -> Tensor:
        """Squared Mahalanobis distance of each patch, (N, 1, h, w) on the patch grid."""
        whitened = F.conv2d(x, self.weight, self.bias, stride=self.step)  # type: ignore[arg-type]
        return whitened.pow(2).sum(1, keepdim=True)

    def rarity(self, x: Tensor) -> Tensor:
        """-2 log of each patch's density under the mixture, offset to be at least 0:
        (N, 1, h, w) on the patch grid, the squared distance when there is one component."""
        weight: Tensor = self.mixture_weight  # type: ignore[assignment]
        offsets: Tensor = self.mixture_offset  # type: ignore[assignment]
        whitened = F.conv2d(x, weight, self.mixture_bias, stride=self.step)  # type: ignore[arg-type]
        n, _, h, w = whitened.shape
        squared = whitened.view(n, self.components, -1, h, w).pow(2).sum(2)
        return -2.0 * torch.logsumexp(offsets.view(1, -1, 1, 1) - 0.5 * squared, 1, keepdim=True)

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
    total = torch.zeros((), dtype=torch.float64)
    first: Tensor | None = None
    second: Tensor | None = None
    for rows in _patch_rows(images, MAX_PATCHES, seed, torch.float64):
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
    _fit_mixture(density, images, covariance, seed)
    return density


def _fit_mixture(density: PatchDensity, images: Tensor, covariance: Tensor, seed: int) -> None:
    """Fill the mixture by EM on a sample of the patches; every component's covariance
    gets the one Gaussian's ridge, so that a component of few or flat patches stays a
    proper density. (Pulling each towards the whole sample's covariance instead, with
    the weight of as many patches as it has dimensions, lost 2-4 points of pixel AUROC
    on brick and on aligned views of a photograph.)"""
    rows = _sample_patches(images, MIXTURE_PATCHES, seed + 2)
    ridge = SHRINK * float(covariance.diagonal().mean().clamp(min=1e-12))
    means = _initial_means(rows, density.components, seed + 3)
    responsibility = F.one_hot(torch.cdist(rows, means).argmin(1), len(means)).float()
    offsets, means, whitenings = _maximise(rows, responsibility, ridge)
    for _ in range(EM_STEPS - 1):
        responsibility = torch.softmax(offsets - 0.5 * _squared(rows, means, whitenings), 1)
        offsets, means, whitenings = _maximise(rows, responsibility, ridge)
    channels = int(density.weight.shape[1])  # type: ignore[index]
    density.mixture_weight = whitenings.reshape(-1, channels, PATCH, PATCH).contiguous()
    density.mixture_bias = -torch.einsum("kde,ke->kd", whitenings, means).flatten()
    density.mixture_offset = offsets


def _maximise(rows: Tensor, responsibility: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    """Offsets (K,): log weight - log det / 2, shifted so that their exponentials sum to
    1; means (K, D); whitenings (K, D, D), W^T W = covariance^-1."""
    counts = responsibility.sum(0)
    weights = counts / counts.sum()
    means = (responsibility.T @ rows) / counts.clamp(min=1e-6)[:, None]
    diagonal = ridge * torch.eye(rows.shape[1])
    whitenings = []
    for k in range(len(counts)):
        centred = rows - means[k]
        scatter = (centred * responsibility[:, k : k + 1]).T @ centred
        covariance = scatter / counts[k].clamp(min=1e-6) + diagonal
        whitenings.append(torch.linalg.inv(torch.linalg.cholesky(covariance.double())).float())
    stacked = torch.stack(whitenings)
    offsets = weights.clamp(min=1e-12).log() + stacked.diagonal(dim1=1, dim2=2).log().sum(1)
    return offsets - torch.logsumexp(offsets, 0), means, stacked


def _squared(rows: Tensor, means: Tensor, whitenings: Tensor) -> Tensor:
    """Squared Mahalanobis distance of every row to every component: (n, K)."""
    return torch.stack(
        [((rows - m) @ w.T).pow(2).sum(1) for m, w in zip(means, whitenings, strict=True)], 1
    )


def _initial_means(rows: Tensor, count: int, seed: int) -> Tensor:
    """k-means++ seeds, then a few rounds of k-means, on a sample of the rows."""
    generator = torch.Generator().manual_seed(seed)
    sample = rows[torch.randperm(len(rows), generator=generator)[:20_000]]
    chosen = [sample[int(torch.randint(len(sample), (1,), generator=generator))]]
    for _ in range(count - 1):
        nearest = torch.cdist(sample, torch.stack(chosen)).amin(1).pow(2)
        if float(nearest.sum()) <= 0.0:  # fewer distinct patches than components
            nearest = torch.ones_like(nearest)
        chosen.append(sample[int(torch.multinomial(nearest, 1, generator=generator))])
    means = torch.stack(chosen)
    for _ in range(10):
        nearest = torch.cdist(sample, means).argmin(1)
        members = [sample[nearest == k] for k in range(count)]
        means = torch.stack([m.mean(0) if len(m) else means[k] for k, m in enumerate(members)])
    return means


def _sample_patches(images: Tensor, count: int, seed: int) -> Tensor:
    """About `count` patches of `images` drawn at random (all if fewer): (n, D) float32."""
    return torch.cat(list(_patch_rows(images, count, seed, torch.float32)))


def _patch_rows(images: Tensor, count: int, seed: int, dtype: torch.dtype) -> Iterator[Tensor]:
    """The patches of `images` (N, C, H, W), a batch of images at a time as rows (n, D),
    each kept at random with the chance that keeps about `count` of them in all."""
    generator = torch.Generator().manual_seed(seed)
    per_image = _positions(images.shape[2]) * _positions(images.shape[3])
    keep = min(1.0, count / max(1, per_image * len(images)))
    for batch in images.split(FIT_BATCH):
        columns = F.unfold(batch.to(dtype), PATCH, stride=STEP)  # (n, D, P)
        rows = columns.permute(0, 2, 1).reshape(-1, columns.shape[1])
        yield rows[torch.rand(len(rows), generator=generator) < keep] if keep < 1.0 else rows


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
