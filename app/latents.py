"""Latent-space arithmetic done by the routes: seeded noise and interpolation paths.

Randomness lives here, at the edge: noise is drawn on the CPU from a generator seeded by
the request, so a seeded request gives the same numbers whichever batch its rows join.
"""

from __future__ import annotations

import secrets

import torch

SEED_MAX = 2**63 - 1  # a caller's seed: what torch.Generator.manual_seed takes
DRAWN_SEED_MAX = 2**53 - 1  # a seed we draw: JavaScript clients read integers exactly up to here


def draw_seed() -> int:
    """A fresh seed for a request that gave none (returned to the caller to reproduce)."""
    return secrets.randbelow(DRAWN_SEED_MAX + 1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def prior_sample(n: int, dim: int, *, temperature: float, seed: int) -> torch.Tensor:
    """z ~ N(0, temperature^2 I): (n, dim)."""
    return torch.randn(n, dim, generator=_generator(seed)) * temperature


def prior_noise(n: int, dim: int, *, temperature: float, seed: int) -> torch.Tensor:
    """The noise of n prior draws, (n, 1 + dim): column 0 uniform in [0, 1) (picks a
    mixture component), columns 1.. from N(0, temperature^2 I). The artifact's
    `prior_latents` maps it to latents; without one they are columns 1.., the N(0, I)
    draws of before, which the same seed still gives (they are drawn first)."""
    generator = _generator(seed)
    eps = torch.randn(n, dim, generator=generator) * temperature
    return torch.cat([torch.rand(n, 1, generator=generator), eps], dim=1)


def posterior_sample(mu: torch.Tensor, logvar: torch.Tensor, *, seed: int) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): the reparameterisation, (N, D)."""
    eps = torch.randn(mu.shape, generator=_generator(seed))
    return mu + eps * torch.exp(0.5 * logvar)


def linear_path(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` evenly spaced points from start to end, both included: (steps, D)."""
    t = torch.linspace(0.0, 1.0, steps).unsqueeze(1)  # (steps, 1)
    return torch.lerp(start.unsqueeze(0), end.unsqueeze(0), t)


def slerp_path(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation (White, "Sampling Generative Networks", 2016): (steps, D).

    Follows the great circle between the two directions, which keeps intermediate points
    at a norm typical of the Gaussian prior instead of cutting through its low-density
    centre. Falls back to the straight line when the angle is (nearly) 0 or pi, or an
    end is the zero vector, where the circle is undefined.
    """
    norms = start.norm() * end.norm()
    if float(norms) == 0.0:
        return linear_path(start, end, steps)
    cos = torch.clamp(torch.dot(start, end) / norms, -1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    if float(sin) < 1e-6:
        return linear_path(start, end, steps)
    t = torch.linspace(0.0, 1.0, steps).unsqueeze(1)  # (steps, 1)
    w_start = torch.sin((1.0 - t) * omega) / sin
    w_end = torch.sin(t * omega) / sin
    return w_start * start.unsqueeze(0) + w_end * end.unsqueeze(0)


def interpolation_path(
    start: torch.Tensor, end: torch.Tensor, steps: int, method: str
) -> torch.Tensor:
    path = slerp_path(start, end, steps) if method == "slerp" else linear_path(start, end, steps)
    path[0], path[-1] = start, end  # exact ends, whatever the float rounding on the way
    return path
