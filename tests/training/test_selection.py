"""Putting the anomaly map together on validation images with synthetic defects."""

from __future__ import annotations

import torch

from tests.training.spatial_data import TINY, stripes
from training import selection
from training.density import fit_patch_density
from training.model import build_model
from training.place import fit_place_density
from training.selection import SHARES, SIGMAS, Scale, choose_map, with_defects
from training.spatial import SpatialVAE


def untrained_with_density() -> SpatialVAE:
    """A map head that knows nothing, beside a patch density fitted on the normal images."""
    torch.manual_seed(0)
    model = build_model(TINY)
    assert isinstance(model, SpatialVAE)
    fit_patch_density(model.density, stripes(64, seed=0))
    return model.eval()


def test_a_scale_puts_the_clean_mean_at_0_and_the_typical_peak_at_1():
    clean = torch.rand(16, 1, 8, 8) * 3 + 2
    scaled = Scale.of(clean)(clean)
    assert abs(float(scaled.mean())) < 1e-5
    assert abs(float(scaled.flatten(1).amax(1).mean()) - 1.0) < 1e-5


def test_the_shares_are_quarters_that_leave_the_map_head_the_rest():
    assert len(SHARES) == 35 and (0.0, 0.0, 0.0) in SHARES and (0.25, 0.5, 0.25) in SHARES
    assert all(min(share) >= 0 and sum(share) <= 1 for share in SHARES)


def test_the_density_takes_the_map_when_the_head_knows_nothing():
    model = untrained_with_density()
    choice = choose_map(model, stripes(48, seed=1), seed=0)
    assert set(choice.auroc) == {(s, share) for s in SIGMAS for share in SHARES}
    assert sum(choice.share) > 0.0
    assert choice.best > choice.auroc[(choice.sigma, (0.0, 0.0, 0.0))]
    assert model.map_sigma == choice.sigma
    assert (model.rare_share, model.plain_share, model.place_share) == choice.share
    assert (model.rare_centre, model.plain_scale) == (
        choice.scales.rare.centre,
        choice.scales.plain.scale,
    )


def test_the_chosen_map_scores_held_out_defects_above_clean_images():
    model = untrained_with_density()
    choose_map(model, stripes(48, seed=1), seed=0)
    clean = stripes(24, seed=2)
    with torch.inference_mode():
        normal = model.score(clean)
        anomalous = model.score(with_defects(clean, seed=3))
        maps = model.anomaly_map(clean)
    assert float((anomalous > normal.max()).float().mean()) > 0.5
    assert float(maps.min()) >= 0.0 and float(maps.max()) < 1.0


def test_a_given_smoothing_is_kept_and_only_the_share_is_chosen():
    model = untrained_with_density()
    choice = choose_map(model, stripes(48, seed=1), seed=0, sigmas=(2.0,))
    assert choice.sigma == 2.0 and {sigma for sigma, _ in choice.auroc} == {2.0}


def test_large_images_are_chosen_on_as_many_as_the_pixel_budget_allows(monkeypatch):
    monkeypatch.setattr(selection, "SELECTION_PIXELS", 10 * 32 * 48)
    model = untrained_with_density()
    seen: list[int] = []
    real = selection.raw_maps
    monkeypatch.setattr(selection, "raw_maps", lambda m, x: seen.append(len(x)) or real(m, x))
    choose_map(model, stripes(48, seed=1), seed=0, sigmas=(2.0,))
    assert seen == [10, 10]


def aligned(count: int, seed: int, noise: float = 0.03) -> torch.Tensor:
    """A dark disk in the same place on every image, on a bright ground, a little noisy:
    a part in a fixture, where what is normal depends on the place."""
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
    disk = ((rows - 16) ** 2 + (cols - 24) ** 2 < 100).float()
    draws = torch.randn(count, 1, 32, 48, generator=torch.Generator().manual_seed(seed))
    return (0.8 - 0.6 * disk + noise * draws).clamp(0, 1)


def test_the_place_density_takes_the_map_where_the_part_is_always_in_one_place():
    torch.manual_seed(0)
    model = build_model(TINY)
    assert isinstance(model, SpatialVAE)
    normal = aligned(64, seed=0)
    fit_patch_density(model.density, normal)
    fit_place_density(model.place, normal)
    choice = choose_map(model.eval(), aligned(48, seed=1), seed=0)
    assert choice.share[2] > 0.0 and model.place_share == choice.share[2]
    clean = aligned(24, seed=2)
    moved = clean.roll(8, dims=3)  # the part out of its place: every patch is still normal
    with torch.inference_mode():
        assert float(model.score(moved).min()) > float(model.score(clean).max())


def test_where_every_setting_flags_every_defect_the_map_that_points_at_them_wins(monkeypatch):
    torch.manual_seed(0)
    model = build_model(TINY)
    assert isinstance(model, SpatialVAE)
    normal = aligned(64, seed=0, noise=0.003)  # so steady that the place map misses nothing
    fit_patch_density(model.density, normal)
    fit_place_density(model.place, normal)
    pointing: dict = {}
    real = selection._pointing
    monkeypatch.setattr(selection, "_pointing", lambda *a: pointing.update(real(*a)) or pointing)
    choice = choose_map(model.eval(), aligned(48, seed=1, noise=0.003), seed=0)
    tied = [key for key, value in choice.auroc.items() if value == choice.best]
    assert len(tied) > 1 and {sigma for sigma, _ in tied} == set(SIGMAS)
    assert set(pointing) == set(tied)
    assert pointing[(choice.sigma, choice.share)] == max(pointing.values())
    # the steadiest smoothing alone, the rule before, blurs a thin defect past finding
    widest = max(value for (sigma, _), value in pointing.items() if sigma == max(SIGMAS))
    assert choice.sigma < max(SIGMAS) and pointing[(choice.sigma, choice.share)] > widest


def test_the_pointing_mixes_sampled_pixels_to_the_values_of_the_whole_map(monkeypatch):
    model = build_model(TINY)
    assert isinstance(model, SpatialVAE)
    generator = torch.Generator().manual_seed(0)
    head, place = (torch.rand(3, 1, 20, 24, generator=generator) for _ in range(2))
    density = torch.rand(3, 2, 20, 24, generator=generator)
    model.rare_share, model.plain_share, model.place_share = 0.25, 0.0, 0.5
    whole = model.mix(head, density, place)[:, 0, ::2, ::2].flatten()
    every = selection._pixel_sample(len(whole))
    assert torch.equal(every, torch.arange(len(whole)))
    monkeypatch.setattr(selection, "POINTING_PIXELS", 100)
    chosen = selection._pixel_sample(len(whole))
    assert len(chosen) == 100 == len(set(chosen.tolist()))
    assert torch.equal(chosen, selection._pixel_sample(len(whole)))  # the same every time
    maps = (selection._sampled(m, chosen) for m in (head, density, place))
    assert torch.equal(model.mix(*maps).flatten(), whole[chosen])
