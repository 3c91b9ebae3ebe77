"""The generic image density behind the `-ic` scores: a model of its own, fitted on the
training split, sharing nothing with the VAE.

A likelihood model rates simple images as likely whatever it was trained on; scoring
the VAE's nll minus a generic model's nll gives a log-likelihood ratio that cancels
that bias (Serra et al., "Input complexity and out-of-distribution detection with
likelihood-based generative models", ICLR 2020). The ratio is only sound when the
generic model is a proper density in its own right, able to explain any image,
noise included: borrowing the VAE's sigma made it worse than the VAE on high-entropy
inputs, so uniform noise got the lowest score of all. This one is::

    p(x) = (1 - v) * prod_i p_local(x_i | its left and upper neighbours) + v * u(x)

- `p_local`, per pixel and channel, around the larger of the left and upper
  neighbours (a causal predictor, as PNG's filters use):
  gaussian: (1 - w) N(x; pred, sigma^2) + w, the normal truncated to [0, 1], so a
  density there;
  bernoulli: Bernoulli(pred clamped to [w / 2, 1 - w / 2]), the VAE's own
  cross-entropy form, with w = 2%.
  The gaussian's `sigma` and `w` are fitted by maximum likelihood on the training split
  (`fit`). The bernoulli's w is not: fitted (5.6% on MNIST digits) it lowered the
  one-class MNIST AUROC a little (README), and its 2% is the clamp the `-ic` scores were
  chosen with.
- `u`, the uniform density on the unit cube (gaussian: 1; bernoulli: 1/2 per pixel),
  with v = 1/2: one bit says whether the image is coded by prediction or stored raw,
  as a compressor stores a block raw when prediction does not pay. No image costs the
  generic model more than log 2 nats over raw pixels, so noise cannot out-score it.

`sigma` and `w` are buffers: they travel in checkpoints and in the TorchScript artifact.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)
from torch import Tensor, nn

RAW_WEIGHT = 0.5  # v above: one bit
SIGMA_GRID = torch.logspace(-6.0, 0.0, 37, base=math.e)  # the VAE's own sigma floor up to 1
OUTLIER_GRID = torch.logspace(-4.0, math.log10(0.5), 25)
LEVELS = 256  # pixels are 8-bit (`app.preprocessing`): the fit counts (pixel, prediction) pairs


def causal_prediction(x: Tensor) -> Tensor:
    """Each pixel's prediction, the larger of its left and upper neighbours: (N, C, H, W)."""
    padded = F.pad(x, (1, 0, 1, 0))
    return torch.maximum(padded[:, :, 1:, :-1], padded[:, :, :-1, 1:])


def local_nll(
    x: Tensor, prediction: Tensor, sigma: Tensor, outlier: Tensor, gaussian: bool
) -> Tensor:
    """-log p_local per pixel and channel, nats; broadcasts over parameter grids."""
    if gaussian:  # the normal truncated to [0, 1], so that it integrates to one there
        z = (x - prediction) / sigma
        inside = torch.special.ndtr((1.0 - prediction) / sigma) - torch.special.ndtr(
            -prediction / sigma
        )
        log_normal = -0.5 * z * z - torch.log(sigma * inside) - 0.5 * math.log(2.0 * math.pi)
        return -torch.logaddexp(torch.log1p(-outlier) + log_normal, torch.log(outlier))
    p = prediction.clamp(0.5 * outlier, 1.0 - 0.5 * outlier)
    return -(x * torch.log(p) + (1.0 - x) * torch.log1p(-p))


class GenericDensity(nn.Module):
    """-log p(x) of the generic model above, nats per image: forward((N, C, H, W)) -> (N,)."""

    def __init__(self, gaussian: bool) -> None:
        super().__init__()
        self.gaussian = gaussian
        self.log_raw = math.log(RAW_WEIGHT)
        self.log_coded = math.log(1.0 - RAW_WEIGHT)
        # the gaussian's until `fit` runs; the bernoulli's 2% (see above) for good
        self.register_buffer("sigma", torch.tensor(0.1))
        self.register_buffer("outlier", torch.tensor(0.02))

    def forward(self, x: Tensor) -> Tensor:
        sigma, outlier = self.sigma, self.outlier
        per_pixel = local_nll(x, causal_prediction(x), sigma, outlier, self.gaussian)  # type: ignore[arg-type]
        coded = per_pixel.flatten(1).sum(1)  # (N,)
        raw_per_pixel = 0.0 if self.gaussian else math.log(2.0)  # -log u, per pixel
        raw = torch.full_like(coded, raw_per_pixel * x[0].numel())
        return -torch.logaddexp(self.log_coded - coded, self.log_raw - raw)

    @torch.jit.unused
    @torch.no_grad()
    def fit(self, images: Tensor, batch: int = 4096) -> GenericDensity:
        """Maximum-likelihood gaussian `sigma` and `w` on `images` (N, C, H, W) in [0, 1],
        on a grid; the bernoulli's fixed w stays."""
        if not self.gaussian:
            return self
        x, prediction, weights = _pair_frequencies(images, batch)
        sigmas = SIGMA_GRID.double()
        outliers = OUTLIER_GRID.double()[:, None]  # (W, 1)
        best = (math.inf, 0.0, 0.0)
        for sigma in sigmas:  # (W, pairs) at a time: the memory of one sigma
            nll = local_nll(x, prediction, sigma, outliers, self.gaussian)
            mean = (nll * weights).sum(-1)  # (W,)
            at = int(mean.argmin())
            best = min(best, (float(mean[at]), float(sigma), float(outliers[at])))
        self.sigma.fill_(best[1])  # type: ignore[operator]
        self.outlier.fill_(best[2])  # type: ignore[operator]
        return self


def _pair_frequencies(images: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct (pixel, prediction) pairs of `images` on the 8-bit grid and their
    frequencies: (P,) float64 each, at most 256 x 256 pairs whatever the data's size."""
    top = LEVELS - 1
    counts = np.zeros(LEVELS * LEVELS, dtype=np.int64)
    for chunk in images.split(batch):
        chunk = chunk.detach().cpu()
        pixel = (chunk * top).round().long()
        guess = (causal_prediction(chunk) * top).round().long()
        counts += np.bincount((pixel * LEVELS + guess).flatten().numpy(), minlength=len(counts))
    seen = torch.from_numpy(np.flatnonzero(counts))
    weights = torch.from_numpy(counts[seen.numpy()]).double() / float(counts.sum())
    return (seen // LEVELS).double() / top, (seen % LEVELS).double() / top, weights
