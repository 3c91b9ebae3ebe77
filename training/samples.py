"""Sample quality: do draws from a model's sampling prior look like its data?

Two figures, both over as many samples (temperature 1, decoded to their mean image, what
`/sample` returns) as there are held-out images:

- `normal_share`: the share of samples that the model's own anomaly score calls normal
  (at or below its calibrated threshold). Held-out normal images score about the
  threshold's level (99%); blobs score far above it.
- `fd`: the Frechet distance between the samples and the held-out images in a fixed,
  model-free feature space, each image average-pooled to 8x8 per channel (FID's formula,
  with pooled pixels in place of Inception features: no pretrained network is at hand
  offline, and the distance must not depend on the model it judges). `data_fd`, the
  same distance between training and held-out images, is what a perfect sampler gets
  at this sample size.

The noise is drawn as the service draws it (`app.latents.prior_noise`), so the figures
are those of `/sample`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)
from torch import Tensor

from app.latents import prior_noise

FEATURE_SIDE = 8
BATCH = 256

PriorFn = Callable[[Tensor, Tensor], Tensor]  # (u (N,), eps (N, D)) -> z (N, D)


@dataclass(frozen=True)
class SampleQuality:
    normal_share: float  # of samples at or below the anomaly threshold
    fd: float  # Frechet distance to the held-out images, pooled-pixel features


@torch.inference_mode()
def draw_samples(
    decode: Callable[[Tensor], Tensor], prior: PriorFn | None, count: int, dim: int, seed: int
) -> Tensor:
    """`count` images from the prior (`prior` None: N(0, I)), as `/sample` draws them."""
    noise = prior_noise(count, dim, temperature=1.0, seed=seed)  # (N, 1 + D)
    u, eps = noise[:, 0], noise[:, 1:]
    latents = eps if prior is None else prior(u, eps)
    return torch.cat([decode(z) for z in latents.split(BATCH)])


@torch.inference_mode()
def sample_quality(
    samples: Tensor, held_out: Tensor, score: Callable[[Tensor], Tensor], threshold: float
) -> SampleQuality:
    scores = torch.cat([score(x).double() for x in samples.split(BATCH)])
    normal = float((scores <= threshold).double().mean())
    return SampleQuality(normal, frechet_distance(features(samples), features(held_out)))


def features(images: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C * 8 * 8): each image average-pooled to 8x8, float64."""
    return F.adaptive_avg_pool2d(images.double(), FEATURE_SIDE).flatten(1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two Gaussians fitted to
    the rows of `a` and `b` (Dowson & Landau 1982; Heusel et al. 2017 for FID)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm(cov_a)
    cross = _sqrtm(root_a @ cov_b @ root_a)  # similar to (S_a S_b)^(1/2): the same trace
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace())


def _sqrtm(matrix: Tensor) -> Tensor:
    """The square root of a symmetric positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T
