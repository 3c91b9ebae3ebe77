"""The density per place: what belongs where, for parts in a fixture."""

import pytest
import torch

from training.place import FLOOR, PlaceDensity, fit_place_density


def test_unfitted_it_says_nothing_at_any_size():
    density = PlaceDensity(3)
    assert torch.equal(density(torch.rand(2, 3, 16, 24)), torch.zeros(2, 1, 16, 24))


def test_it_is_the_squared_standardised_distance_to_each_places_mean():
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(1, 2, 8, 12, generator=generator)
    images = (base + 0.1 * torch.randn(500, 2, 8, 12, generator=generator)).double()
    density = fit_place_density(PlaceDensity(2), images.float())
    assert torch.allclose(density.mean, images.mean(0).float(), atol=1e-5)
    assert torch.allclose(1 / density.inverse_spread, images.std(0).float(), atol=1e-4)
    x = torch.rand(3, 2, 8, 12)
    expected = ((x - images.mean(0).float()) / images.std(0).float()).pow(2).sum(1, keepdim=True)
    assert torch.allclose(density(x), expected, rtol=1e-3)


def test_a_place_that_never_changes_gets_the_floor_not_an_infinite_scale():
    images = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    images[:, :, :2] = 0.0  # a black border, in every image
    density = fit_place_density(PlaceDensity(1), images)
    spread = 1 / density.inverse_spread
    assert torch.allclose(
        spread[:, :2],
        torch.full_like(spread[:, :2], FLOOR * float(images.std(0).mean())),
        rtol=1e-2,
    )
    assert bool(torch.isfinite(density(torch.ones(1, 1, 8, 8))).all())


def test_a_defect_where_the_part_is_dark_scores_above_the_same_pixels_where_it_is_bright():
    images = torch.full((40, 1, 8, 16), 0.8)
    images[:, :, :, :8] = 0.2  # dark left half, bright right half, in every image
    images = images + 0.02 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    density = fit_place_density(PlaceDensity(1), images)
    spot = images[:1].clone()
    spot[:, :, 3:5, 3:5] = 0.8  # bright on the dark half: normal anywhere on the right
    evidence = density(spot)[0, 0]
    assert float(evidence[3:5, 3:5].min()) > 100 * float(evidence[:, 8:].mean())


def test_fitting_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_place_density(PlaceDensity(1), torch.rand(1, 1, 8, 8))
