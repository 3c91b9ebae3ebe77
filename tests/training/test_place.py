"""The density per place: what belongs where, for parts in a fixture."""

import pytest
import torch

from training import place, register
from training.place import FLOOR, PlaceDensity, fit_place_density


def aligned(count: int, seed: int, size: tuple[int, int] = (12, 16)) -> torch.Tensor:
    """A part in a fixture: one picture, relit (brighter or darker along one direction)
    and a little noisy."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.2, 0.8, size[0] * size[1]).view(1, 1, *size)
    light = torch.rand(count, 1, 1, 1, generator=generator) * 0.2 - 0.1
    return (
        base + light * base / base.mean() + 0.01 * torch.randn(count, 1, *size, generator=generator)
    )


def test_unfitted_it_says_nothing_at_any_size():
    assert torch.equal(PlaceDensity(3)(torch.rand(2, 3, 16, 24)), torch.zeros(2, 1, 16, 24))


def test_a_normal_change_along_a_principal_direction_costs_nothing_a_spot_a_lot():
    density = fit_place_density(PlaceDensity(1), aligned(200, seed=0))
    assert 1 <= density.basis.shape[0] < 200 and density.mean.shape == (1, 12, 16)
    clean = aligned(20, seed=1)
    relit = clean * 1.08  # beyond every training image's light, along its direction
    spot = clean.clone()
    spot[:, :, 4:6, 5:7] += 0.1
    with torch.inference_mode():
        typical = float(density(clean).mean())
        assert 0.5 < typical < 2.0  # squared standardised noise: about 1 a pixel
        assert float(density(relit).mean()) < 2 * typical
        assert float(density(spot)[:, :, 4:6, 5:7].amin()) > 20 * typical


def test_a_place_that_never_changes_gets_the_floor_not_an_infinite_scale(monkeypatch):
    monkeypatch.setattr(register, "COHERENT", 2.0)  # the plain Gaussian: no turn here
    images = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    images[:, :, :2] = 0.0  # a black border, in every image
    density = fit_place_density(PlaceDensity(1), images)
    spread = 1 / density.inverse_spread
    border = spread[:, :2]
    assert float(border.amin()) == float(border.amax()) == float(spread.amin()) > 0
    assert float(border.amin()) <= FLOOR * float(spread.mean())
    assert bool(torch.isfinite(density(torch.ones(1, 1, 8, 8))).all())


def test_large_images_keep_fewer_directions(monkeypatch):
    monkeypatch.setattr(place, "MAX_BASIS", 5 * 12 * 16)
    images = torch.rand(100, 1, 12, 16, generator=torch.Generator().manual_seed(2))
    assert fit_place_density(PlaceDensity(1), images).basis.shape == (5, 12 * 16)


def test_the_scripted_density_computes_what_the_eager_one_does(tmp_path):
    density = fit_place_density(PlaceDensity(3), torch.rand(40, 3, 8, 8))
    torch.jit.save(torch.jit.script(density), tmp_path / "place.pt")
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(torch.jit.load(tmp_path / "place.pt")(x), density(x), atol=1e-5)


def test_fitting_needs_four_images():
    with pytest.raises(ValueError, match="at least 4 images"):
        fit_place_density(PlaceDensity(1), torch.rand(3, 1, 8, 8))
