"""The sampling prior: a mixture fitted to the training latents, carried in the artifact."""

from __future__ import annotations

import torch

from training.model import VAE, mixture_latents
from training.prior import fit_mixture, mixture_prior


def test_the_mixture_maps_noise_to_components_by_weight() -> None:
    cdf = torch.tensor([0.25, 1.0])  # weights 1/4 and 3/4
    means = torch.tensor([[-10.0, 0.0], [10.0, 5.0]])
    scale_tril = torch.stack([torch.eye(2), torch.tensor([[2.0, 0.0], [1.0, 3.0]])])
    u, eps = torch.tensor([0.1, 0.3, 0.999999]), torch.tensor([[1.0, 1.0]] * 3)
    z = mixture_latents(u, eps, cdf, means, scale_tril)
    assert torch.allclose(z[0], torch.tensor([-9.0, 1.0]))  # u < 1/4: the first component
    assert torch.allclose(z[1], torch.tensor([12.0, 9.0]))  # mean + L eps of the second
    assert torch.allclose(z[2], z[1])  # the top of [0, 1) still lands in the last one


def test_a_fitted_mixture_finds_where_the_latents_are() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[8.0, -8.0, 0.0], [-8.0, 8.0, 3.0]])
    latents = centres[torch.arange(400) % 2] + 0.5 * torch.randn(400, 3, generator=generator)
    weights, means, covariances = fit_mixture(latents, components=2, seed=0)
    found = means[means[:, 0].argsort(descending=True)].float()
    assert torch.allclose(found, centres, atol=0.2) and torch.allclose(
        weights, torch.tensor(0.5).double(), atol=0.05
    )
    z = mixture_prior(weights, means, covariances)(torch.rand(1000), torch.randn(1000, 3))
    assert (z[:, :2].abs() > 4).all()  # no draw falls in the empty middle, where N(0, I) would


def test_a_model_without_a_mixture_samples_the_standard_normal(tiny_config) -> None:
    model = VAE(tiny_config.model_config(channels=1))
    eps = torch.randn(5, 4)
    assert torch.equal(model.prior_latents(torch.rand(5), eps), eps)
    model.set_sampling_prior(torch.ones(1), torch.full((1, 4), 3.0), torch.eye(4)[None] * 4)
    assert torch.allclose(model.prior_latents(torch.rand(5), eps), 3.0 + 2.0 * eps)
    assert not any(key.startswith("prior_") for key in model.state_dict())  # not a weight
