"""The patch density: a Gaussian of raw patches, evaluated as a convolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from training import density as density_module
from training.defects import draw_defect
from training.density import PATCH, STEP, PatchDensity, fit_patch_density, patch_moments
from training.roc import auroc


def texture(count: int, seed: int, channels: int = 1) -> torch.Tensor:
    """Normal images: diagonal stripes of random phase and a little noise, (N, C, 40, 56)."""
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(count, 1, 1, 1, generator=generator) * 2 * math.pi
    rows = torch.arange(40).view(1, 1, 40, 1).float()
    cols = torch.arange(56).view(1, 1, 1, 56).float()
    base = 0.5 + 0.25 * torch.sin((rows + cols) * 0.7 + phase)
    noise = 0.03 * torch.randn(count, channels, 40, 56, generator=generator)
    return (base.expand(count, channels, 40, 56) + noise).clamp(0, 1)


def fitted(channels: int = 1) -> PatchDensity:
    return fit_patch_density(PatchDensity(channels), texture(48, seed=0, channels=channels))


def test_the_convolution_is_the_mahalanobis_distance_of_each_patch():
    train = texture(48, seed=0)
    model = fit_patch_density(PatchDensity(1), train)
    mean, covariance = patch_moments(train, seed=0)
    ridge = density_module.SHRINK * float(covariance.diagonal().mean())
    precision = torch.linalg.inv(covariance + ridge * torch.eye(len(mean), dtype=torch.float64))
    x = texture(2, seed=1)
    patches = F.unfold(x.double(), PATCH, stride=STEP).permute(0, 2, 1) - mean  # (N, P, D)
    expected = torch.einsum("npd,de,npe->np", patches, precision, patches)
    with torch.inference_mode():
        whitened = F.conv2d(x, model.weight, model.bias, stride=STEP)
    got = whitened.pow(2).sum(1).flatten(1)
    assert torch.allclose(got.double(), expected, rtol=1e-3, atol=1e-2)


def test_the_moments_of_a_sample_of_patches_are_those_of_all_of_them(monkeypatch):
    train = texture(32, seed=0)
    mean, covariance = patch_moments(train, seed=0)
    monkeypatch.setattr(density_module, "MAX_PATCHES", 1500)  # of 3,744
    sampled_mean, sampled_covariance = patch_moments(train, seed=0)
    assert torch.allclose(sampled_mean, mean, atol=0.01)
    assert torch.allclose(sampled_covariance, covariance, atol=0.004)
    assert not torch.equal(sampled_covariance, covariance)


def test_the_maps_have_the_image_size_and_are_flat_where_the_image_is_normal():
    model = fitted()
    with torch.inference_mode():
        maps = model(texture(4, seed=1))
    assert maps.shape == (4, 2, 40, 56)
    dims = PATCH * PATCH  # a normal patch's squared distance averages its dimension
    assert 0.5 * dims < float(maps[:, 0].mean()) < 1.5 * dims
    # plain: -log of the share of training patches nearer the mean, 1 on average
    assert 0.5 < float(maps[:, 1].mean()) < 1.5


def test_the_levels_are_the_training_patches_log_distances_in_order():
    train = texture(48, seed=0)
    model = fit_patch_density(PatchDensity(1), train)
    with torch.inference_mode():
        logs = model.distances(train).log().flatten()
    assert bool((model.levels[1:] >= model.levels[:-1]).all())
    assert abs(float(model.levels[0]) - float(logs.min())) < 1e-4
    assert abs(float(model.levels[-1]) - float(logs.max())) < 1e-4
    median = float(model.levels[len(model.levels) // 2])
    assert abs(float((logs < median).float().mean()) - 0.5) < 0.01


def test_a_flat_disk_in_the_texture_is_plain_and_not_rare_to_one_gaussian():
    model = fit_patch_density(PatchDensity(1, components=1), texture(48, seed=0))
    clean = texture(24, seed=2)
    flat = clean.clone()
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(56), indexing="ij")
    disk = (yy - 20) ** 2 + (xx - 28) ** 2 <= 12**2
    flat[:, :, disk] = 0.5  # the texture's own mean grey: close to the mean patch
    with torch.inference_mode():
        normal, defective = model(clean), model(flat)
    centre = defective[:, :, 18:23, 26:31]  # patches wholly inside the disk
    assert float(centre[:, 1].min()) > float(normal[:, 1].max())  # plain
    assert float(centre[:, 0].max()) < float(normal[:, 0].mean())  # and not rare
    mixture = fitted()  # the mixture's components hug the stripes: the disk is rare there
    with torch.inference_mode():
        assert float(mixture(flat)[:, 0, 18:23, 26:31].min()) > float(mixture(clean)[:, 0].max())


def test_a_thin_crack_in_the_texture_lights_up_where_it_is():
    model = fitted()
    clean = texture(24, seed=2)
    rng = np.random.default_rng(0)
    drawn = [draw_defect(image, "crack", rng) for image in clean.permute(0, 2, 3, 1).numpy()]
    defective = torch.from_numpy(np.stack([d.image for d in drawn])).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.stack([d.mask for d in drawn]))
    with torch.inference_mode():
        normal_maps, defect_maps = model(clean)[:, 0], model(defective.float())[:, 0]  # rare
    assert auroc(normal_maps.flatten(1).amax(1), defect_maps.flatten(1).amax(1)) > 0.9
    assert auroc(defect_maps[~masks], defect_maps[masks]) > 0.8


def test_colour_patches_have_a_dimension_per_channel_and_an_unfitted_density_sees_nothing():
    assert fitted(channels=3).weight.shape == (3 * PATCH * PATCH, 3, PATCH, PATCH)
    with torch.inference_mode():
        assert float(PatchDensity(3)(torch.rand(1, 3, 16, 24))[:, 0].abs().max()) == 0.0


def test_the_fit_is_not_in_the_state_dict_but_travels_in_torchscript(tmp_path):
    model = fitted()
    assert model.state_dict() == {}
    torch.jit.save(torch.jit.script(model), tmp_path / "density.pt")
    loaded = torch.jit.load(tmp_path / "density.pt")
    x = texture(2, seed=3)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_the_levels_of_many_images_come_from_as_many_as_hold_the_patch_budget(monkeypatch):
    monkeypatch.setattr(density_module, "MAX_PATCHES", 3 * 9 * 13)  # 3 images' patches
    train = texture(48, seed=0)
    seen: list[int] = []
    real = PatchDensity.distances
    monkeypatch.setattr(PatchDensity, "distances", lambda m, x: seen.append(len(x)) or real(m, x))
    fit_patch_density(PatchDensity(1), train)
    assert seen == [3]


def two_tones(count: int, seed: int) -> torch.Tensor:
    """Normal images of two kinds of surface: dark or bright blocks of 16 px, noisy."""
    generator = torch.Generator().manual_seed(seed)
    tones = torch.rand(count, 1, 3, 4, generator=generator) < 0.5
    blocks = F.interpolate(0.2 + 0.6 * tones.float(), scale_factor=16.0, mode="nearest")
    return (blocks + 0.03 * torch.randn(blocks.shape, generator=generator)).clamp(0, 1)


def test_with_one_component_the_rare_evidence_is_the_squared_distance():
    train = texture(48, seed=0)
    model = fit_patch_density(PatchDensity(1, components=1), train)
    x = texture(3, seed=1)
    with torch.inference_mode():
        rarity, distance = model.rarity(x), model.distances(x)
    assert torch.allclose(rarity, distance, rtol=0.02, atol=0.5)


def test_a_tone_between_two_kinds_of_surface_is_rare_for_the_mixture_not_for_one_gaussian():
    train = two_tones(64, seed=0)
    mixture = fit_patch_density(PatchDensity(1), train)
    single = fit_patch_density(PatchDensity(1, components=1), train)
    clean = two_tones(16, seed=1)
    grey = clean.clone()
    grey[:, :, 12:36, 12:36] = 0.5  # the mean of the two tones: the one Gaussian's middle
    masks = torch.zeros(16, 48, 64, dtype=torch.bool)
    masks[:, 12:36, 12:36] = True

    def separation(model: PatchDensity) -> float:
        with torch.inference_mode():
            normal, defective = model(clean)[:, 0], model(grey)[:, 0]
        return auroc(normal.flatten(), defective[masks].flatten())

    assert separation(mixture) > 0.99
    assert separation(single) < 0.6


def test_the_mixture_is_never_negative_and_has_fewer_components_for_colour():
    model = fit_patch_density(PatchDensity(1), two_tones(32, seed=0))
    assert model.components == density_module.COMPONENTS
    with torch.inference_mode():
        assert float(model.rarity(two_tones(4, seed=1)).min()) >= 0.0
        assert float(model.rarity(torch.rand(4, 1, 48, 64)).min()) >= 0.0
    assert float(torch.logsumexp(model.mixture_offset, 0)) == pytest.approx(0.0, abs=1e-5)
    colour = PatchDensity(3)
    assert colour.components * 3 * PATCH * PATCH <= density_module.MIXTURE_CHANNELS
    assert colour.mixture_weight.shape == (colour.components * 3 * PATCH * PATCH, 3, PATCH, PATCH)


def test_the_mixture_fits_images_with_fewer_distinct_patches_than_components():
    flat = torch.full((4, 1, 16, 16), 0.5)
    model = fit_patch_density(PatchDensity(1), flat)
    with torch.inference_mode():
        evidence = model(flat)
    assert bool(evidence.isfinite().all())
