"""Tiny inspection models' shared test data: a spatial config and striped normal images."""

from __future__ import annotations

import math

import torch

from training.model import ModelConfig

TINY = ModelConfig(
    architecture="spatial",
    channels=1,
    image_size=32,
    work_size=(32, 48),
    latent_dim=8 * 8 * 12,
    hidden=(8, 16),
    likelihood="gaussian",
    score="map",
    latent_channels=8,
    crop=16,
    crops_per_image=2,
    map_hidden=(8, 16),
    map_sigma=1.0,
)


def stripes(count: int, seed: int) -> torch.Tensor:
    """Normal images: vertical stripes of random phase and a little noise, (N, 1, 32, 48)."""
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(count, 1, 1, 1, generator=generator) * 2 * math.pi
    cols = torch.arange(48).view(1, 1, 1, 48).float()
    base = 0.5 + 0.3 * torch.sin(cols * 0.8 + phase)
    noise = 0.03 * torch.randn(count, 1, 32, 48, generator=generator)
    return (base.expand(count, 1, 32, 48) + noise).clamp(0, 1)
