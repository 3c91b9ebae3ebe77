"""The sampling prior: a Gaussian mixture fitted to where the training images encode.

A VAE is trained against the prior N(0, I), but its aggregate posterior (where the
training images actually encode) rarely fills that prior: with a Gaussian likelihood
the reconstruction term can dwarf the KL, and the encoder's means drift far from the
origin. Draws from N(0, I) then land where no image encodes and decode to blobs. So,
after training, a Gaussian mixture with full covariances is fitted to the training
images' encoder means (scikit-learn's EM, k-means initialised), as Pythae's GMM sampler
does (Ghosh et al., "From variational to deterministic autoencoders", ICLR 2020, call
it ex-post density estimation). The artifact carries it (`VAE.prior_latents`), and
`/sample` draws from it. The ELBO, the IWAE bound and the anomaly score keep N(0, I),
the prior the model was trained with: the mixture only decides where samples come from.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from training.errors import TrainingError
from training.model import VAE, mixture_latents
from training.samples import PriorFn

ENCODE_BATCH = 512
REG_COVAR = 1e-4  # added to each covariance's diagonal: keeps unused latent dimensions invertible


@torch.inference_mode()
def encoder_means(encode: Callable[[Tensor], tuple[Tensor, Tensor]], images: Tensor) -> Tensor:
    """mu of q(z|x) for every image, (N, D) on the CPU (`encode`: eager or TorchScript)."""
    return torch.cat([encode(batch)[0].cpu() for batch in images.split(ENCODE_BATCH)])


def fit_mixture(latents: Tensor, components: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A `components`-Gaussian mixture fitted to `latents` (N, D): weights, means, covariances."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture  # the 'train' extra
    except ImportError:
        raise TrainingError(
            "the sampling prior needs scikit-learn: pip install -e '.[train]'"
        ) from None
    mixture = GaussianMixture(
        n_components=min(components, len(latents)),
        covariance_type="full",
        reg_covar=REG_COVAR,
        random_state=seed,
    )
    with warnings.catch_warnings():
        # fewer distinct latents than components (a tiny or repetitive set) still fits:
        # the spare components just take little weight
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture.fit(latents.double().numpy())
    return (
        torch.from_numpy(mixture.weights_),
        torch.from_numpy(mixture.means_),
        torch.from_numpy(mixture.covariances_),
    )


def mixture_prior(weights: Tensor, means: Tensor, covariances: Tensor) -> PriorFn:
    """A fitted mixture as `prior_latents` would compute it, for any artifact."""
    cdf = (weights.double() / weights.double().sum()).cumsum(0).float()
    scale_tril = torch.linalg.cholesky(covariances.double()).float()
    return lambda u, eps: mixture_latents(u, eps, cdf, means.float(), scale_tril)


def fit_sampling_prior(model: VAE, images: Tensor, components: int, seed: int) -> None:
    """Fit the mixture to `images`' encodings and give it to `model` (on the CPU)."""
    model.set_sampling_prior(*fit_mixture(encoder_means(model.encode, images), components, seed))
