"""The VAE's mathematics: the KL term, the reparameterisation, the IWAE bound."""

from __future__ import annotations

import math

import torch

from training.config import TrainConfig
from training.metrics import iwae_nll, negative_elbo
from training.model import VAE, gaussian_kl


def tiny_model(config: TrainConfig) -> VAE:
    torch.manual_seed(0)
    return VAE(config.model_config(channels=1)).eval()


def test_closed_form_kl_equals_a_monte_carlo_estimate() -> None:
    generator = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.0, 1.5, -0.7])
    logvar = torch.tensor([0.0, -1.0, 0.8])
    sigma = (0.5 * logvar).exp()
    z = mu + sigma * torch.randn(400_000, 3, generator=generator, dtype=torch.float64)
    log_q = -0.5 * (((z - mu) / sigma) ** 2 + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    monte_carlo = (log_q - log_p).mean(0)
    assert torch.allclose(gaussian_kl(mu, logvar).double(), monte_carlo, atol=0.01)


def test_gradients_flow_through_the_reparameterised_sample(tiny_config: TrainConfig) -> None:
    model = tiny_model(tiny_config)
    mu = torch.zeros(2, 4, requires_grad=True)
    logvar = torch.zeros(2, 4, requires_grad=True)
    eps = torch.randn(2, 4)
    model.reparameterize(mu, logvar, eps).sum().backward()
    assert torch.equal(mu.grad, torch.ones(2, 4))
    assert torch.allclose(logvar.grad, 0.5 * eps)


def test_the_reconstruction_term_trains_the_encoder(tiny_config: TrainConfig, synthetic) -> None:
    model = tiny_model(tiny_config).train()
    recon, _, _ = model(synthetic.images[:8])
    recon.sum().backward()  # no KL: the encoder is reached only through z
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in encoder_grads)


def test_the_iwae_bound_is_at_least_the_elbo(tiny_config: TrainConfig, synthetic) -> None:
    model = tiny_model(tiny_config)
    x = synthetic.images
    iwae = iwae_nll(model, x, samples=64)
    nelbo = negative_elbo(model, x, samples=64)
    assert float(iwae.mean()) <= float(nelbo.mean())
    with torch.no_grad():
        eps = torch.randn(64, len(x), 4)
        assert float(model.iwae_with(x, eps).mean()) <= float(model.nelbo_with(x, eps).mean())


def test_iwae_merges_groups_of_draws_exactly(tiny_config: TrainConfig, synthetic, monkeypatch):
    monkeypatch.setattr("training.metrics.EVAL_PIXELS", 4 * 28 * 28)  # 1 image, groups of 4
    model = tiny_model(tiny_config)
    x = synthetic.images[:3]
    chunked = iwae_nll(model, x, samples=8, seed=5)
    generator = torch.Generator().manual_seed(5)
    expected = []
    with torch.no_grad():
        for image in x.split(1):
            eps = torch.cat([torch.randn(4, 1, 4, generator=generator) for _ in range(2)])
            expected.append(model.iwae_with(image, eps))
    assert torch.allclose(chunked, torch.cat(expected), atol=1e-4)
