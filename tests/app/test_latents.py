"""Seeded noise and interpolation paths in latent space."""

from __future__ import annotations

import torch

from app.latents import (
    DRAWN_SEED_MAX,
    draw_seed,
    interpolation_path,
    linear_path,
    posterior_sample,
    prior_noise,
    prior_sample,
    slerp_path,
)


def test_prior_sample_is_a_function_of_the_seed():
    a = prior_sample(5, 3, temperature=1.0, seed=1)
    assert torch.equal(a, prior_sample(5, 3, temperature=1.0, seed=1))
    assert not torch.equal(a, prior_sample(5, 3, temperature=1.0, seed=2))
    assert torch.allclose(prior_sample(5, 3, temperature=0.5, seed=1), a * 0.5)


def test_prior_sample_does_not_touch_the_global_generator():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    prior_sample(4, 4, temperature=1.0, seed=3)
    assert torch.equal(torch.rand(1), expected)


def test_prior_noise_is_a_component_pick_then_the_old_normal_draws():
    noise = prior_noise(500, 3, temperature=0.5, seed=1)
    assert (
        noise.shape == (500, 4) and 0.0 <= float(noise[:, 0].min()) < float(noise[:, 0].max()) < 1.0
    )
    assert torch.equal(noise[:, 1:], prior_sample(500, 3, temperature=0.5, seed=1))
    assert torch.equal(noise[:, 0], prior_noise(500, 3, temperature=2.0, seed=1)[:, 0])
    assert torch.equal(noise, prior_noise(500, 3, temperature=0.5, seed=1))


def test_posterior_sample_reparameterises():
    mu, logvar = torch.zeros(2, 3), torch.full((2, 3), -200.0)  # sigma ~ 0
    assert torch.allclose(posterior_sample(mu, logvar, seed=1), mu)
    wide = posterior_sample(mu, torch.zeros(2, 3), seed=1)
    assert torch.equal(wide, posterior_sample(mu, torch.zeros(2, 3), seed=1))


def test_drawn_seeds_are_exact_in_javascript():
    assert all(0 <= draw_seed() <= DRAWN_SEED_MAX for _ in range(100))


def test_linear_path_includes_both_ends_evenly():
    start, end = torch.tensor([0.0, 0.0]), torch.tensor([4.0, -4.0])
    path = linear_path(start, end, 5)
    assert path.shape == (5, 2)
    assert torch.allclose(path[:, 0], torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))


def test_slerp_keeps_the_norm_between_equal_norm_ends():
    start, end = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    path = slerp_path(start, end, 7)
    assert torch.allclose(path.norm(dim=1), torch.full((7,), 3.0), atol=1e-5)
    assert torch.allclose(path[0], start, atol=1e-6) and torch.allclose(path[-1], end, atol=1e-6)


def test_slerp_falls_back_to_linear_when_undefined():
    zero, v = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(slerp_path(zero, v, 3), linear_path(zero, v, 3))
    assert torch.allclose(slerp_path(v, 2 * v, 3), linear_path(v, 2 * v, 3))


def test_interpolation_path_ends_are_exact():
    start, end = torch.randn(8), torch.randn(8)
    for method in ("linear", "slerp"):
        path = interpolation_path(start, end, 9, method)
        assert torch.equal(path[0], start) and torch.equal(path[-1], end)
