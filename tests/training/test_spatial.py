import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.spatial_data import TINY, stripes
from training.defects import draw_defect
from training.density import fit_patch_density
from training.model import ModelConfig, build_model
from training.place import fit_place_density
from training.roc import auroc
from training.selection import SHARES, choose_map
from training.spatial import SpatialVAE, gaussian_kernel, map_loss, squash


def tiny(config: ModelConfig = TINY) -> SpatialVAE:
    torch.manual_seed(0)
    model = build_model(config)
    assert isinstance(model, SpatialVAE)
    return model.eval()


def test_every_artifact_method_takes_the_exported_size_and_returns_the_contract_shapes():
    model, x = tiny(), torch.rand(3, 1, 32, 48)
    assert model.latent_shape == [8, 8, 12] and model.latent_dim == 8 * 8 * 12
    with torch.inference_mode():
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (3, model.latent_dim)
        assert model.decode(mu).shape == (3, 1, 32, 48)
        assert model.elbo(x, 2).shape == model.iwae(x, 2).shape == model.score(x).shape == (3,)
        assert model.pixel_nll(x).shape == (3, 1, 32, 48)
        maps = model.anomaly_map(x)
    assert maps.shape == (3, 1, 32, 48)
    assert bool(((maps >= 0) & (maps <= 1)).all())


def test_the_score_is_the_largest_value_of_the_smoothed_map():
    model, x = tiny(), torch.rand(4, 1, 32, 48)
    with torch.inference_mode():
        assert torch.equal(model.score(x), model.anomaly_map(x).flatten(1).amax(1))


def with_evidence_scales(model: SpatialVAE) -> SpatialVAE:
    fit_patch_density(model.density, torch.rand(8, 1, 32, 48))
    model.head_centre, model.head_scale = 0.4, 0.2
    model.rare_centre, model.rare_scale = 60.0, 20.0
    model.plain_centre, model.plain_scale = 1.0, 3.0
    fit_place_density(model.place, torch.rand(8, 1, 32, 48))
    model.place_centre, model.place_scale = 2.0, 4.0
    return model


@pytest.mark.parametrize(
    "share", [(0.0, 0.0, 0.0), (0.5, 0.25, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0, 0.25, 0.5)]
)
def test_the_scripted_module_computes_what_the_eager_one_does(share, tmp_path):
    model, x = with_evidence_scales(tiny()), torch.rand(2, 1, 32, 48)
    model.rare_share, model.plain_share, model.place_share = share
    torch.jit.save(torch.jit.script(model), tmp_path / "model.pt")
    scripted = torch.jit.load(tmp_path / "model.pt")
    with torch.inference_mode():
        assert torch.allclose(scripted.anomaly_map(x), model.anomaly_map(x), atol=1e-6)
        assert torch.allclose(scripted.encode(x)[0], model.encode(x)[0], atol=1e-6)


def test_a_map_without_a_share_is_skipped_and_the_mix_keeps_every_value_exactly():
    # The formula every share was mixed by before maps without a share were skipped.
    def every_term(model: SpatialVAE, head, density, place):
        head_share = 1.0 - model.rare_share - model.plain_share - model.place_share
        mixed = head_share * (head - model.head_centre) / model.head_scale
        rare = (density[:, :1] - model.rare_centre) / model.rare_scale
        plain = (density[:, 1:] - model.plain_centre) / model.plain_scale
        at_place = (place - model.place_centre) / model.place_scale
        return (
            mixed
            + model.rare_share * rare
            + model.plain_share * plain
            + (model.place_share * at_place)
        )

    model = with_evidence_scales(tiny())
    generator = torch.Generator().manual_seed(0)
    head, place = (torch.randn(3, 1, 8, 8, generator=generator) for _ in range(2))
    density = torch.randn(3, 2, 8, 8, generator=generator) * 30 + 50
    for share in SHARES:
        model.rare_share, model.plain_share, model.place_share = share
        assert torch.equal(model.mix(head, density, place), every_term(model, head, density, place))


def test_the_map_mixes_the_four_kinds_of_evidence_by_their_shares():
    model, x = with_evidence_scales(tiny()), torch.rand(2, 1, 32, 48)
    with torch.inference_mode():
        head = (model.head_map(x) - 0.4) / 0.2
        density = model.density(x)
        rare, plain = (density[:, :1] - 60.0) / 20.0, (density[:, 1:] - 1.0) / 3.0
        place = (model.place(x) - 2.0) / 4.0
        model.rare_share, model.plain_share, model.place_share = 0.25, 0.25, 0.25
        mixed = model.evidence(x)
        expected = 0.25 * head + 0.25 * rare + 0.25 * plain + 0.25 * place
        assert torch.allclose(mixed, expected, atol=1e-5)
        assert torch.allclose(model.anomaly_map(x), squash(model.smooth(mixed)), atol=1e-6)


def test_the_squash_keeps_the_order_and_maps_typical_normal_pixels_near_0():
    evidence = torch.linspace(-1, 6, 200)
    squashed = squash(evidence)
    assert bool((squashed[1:] > squashed[:-1]).all())
    assert float(squash(torch.tensor(0.0))) < 0.1 < 0.45 < float(squash(torch.tensor(1.0)))
    assert float(squashed.max()) < 1.0


def test_the_squash_stays_below_1_and_in_order_on_very_strong_evidence():
    # A defect far outside the normal range must still rank above a milder one, and a
    # threshold among strong scores must leave room above it (float32, as served).
    evidence = torch.logspace(0, 6, 200, dtype=torch.float32)
    squashed = squash(evidence)
    assert bool((squashed[1:] > squashed[:-1]).all())
    assert float(squashed.max()) < 1.0


def test_an_image_scores_the_same_alone_and_in_a_batch():
    model, x = tiny(), torch.rand(5, 1, 32, 48)
    with torch.inference_mode():
        alone = model.score(x[2:3])
        together = model.score(x)[2:3]
    assert torch.allclose(alone, together, atol=1e-6)


def test_smoothing_spreads_a_point_as_a_normalised_gaussian():
    model = tiny()
    model.map_sigma = 2.0
    point = torch.zeros(1, 1, 31, 31)
    point[0, 0, 15, 15] = 1.0
    blurred = model.smooth(point)[0, 0]
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    kernel = gaussian_kernel(2.0)
    assert float(blurred[15, 15]) == pytest.approx(float(kernel.max() ** 2), rel=1e-5)
    assert float(blurred[15, 17]) / float(blurred[15, 15]) == pytest.approx(
        math.exp(-0.5), rel=1e-4
    )


def test_the_training_pass_returns_per_crop_terms_on_random_crops():
    model = tiny().train()
    torch.manual_seed(1)
    recon, kl, mu, map_term = model(torch.rand(3, 1, 32, 48))
    crops = 3 * TINY.crops_per_image
    assert recon.shape == (crops,) and map_term.shape == (crops,)
    assert kl.shape == (crops, TINY.latent_channels)
    assert mu.shape == (crops, TINY.latent_channels, 4, 4)
    assert bool((map_term > 0).all())


def test_the_map_loss_is_lowest_when_the_map_points_at_the_mask():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1.0
    right = map_loss((mask * 2 - 1) * 6, mask)
    wrong = map_loss((1 - mask * 2) * 6, mask)
    blind = map_loss(torch.full_like(mask, -6.0), mask)
    assert float(right) < float(blind) < float(wrong)


@pytest.fixture(scope="module")
def trained() -> SpatialVAE:
    """The tiny model after 400 steps on stripes: what a brief real training run gives."""
    torch.manual_seed(0)
    model = build_model(TINY).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    normal = stripes(64, seed=0)
    for step in range(400):
        recon, kl, _, map_term = model(normal[(step * 8) % 64 : (step * 8) % 64 + 8])
        loss = (recon + kl.sum(1) + map_term).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert isinstance(model, SpatialVAE)
    return model.eval()


def test_after_brief_training_a_drawn_defect_raises_its_images_score(trained):
    clean = stripes(16, seed=1)
    rng = np.random.default_rng(0)
    pixels = clean.permute(0, 2, 3, 1).numpy()
    drawn = np.stack([draw_defect(p, "missing", rng).image for p in pixels])
    defective = torch.from_numpy(drawn).permute(0, 3, 1, 2)
    with torch.inference_mode():
        assert auroc(trained.score(clean), trained.score(defective)) > 0.8


def unrelated() -> dict[str, torch.Tensor]:
    """Inputs a stripes model never saw: noise, flat grey, a page of text, a photograph."""
    from skimage import data

    def fit(image: np.ndarray) -> torch.Tensor:
        resized = Image.fromarray(image).convert("L").resize((48, 32), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).view(1, 1, 32, 48)

    generator = torch.Generator().manual_seed(5)
    return {
        "noise": torch.rand(1, 1, 32, 48, generator=generator),
        "constant": torch.full((1, 1, 32, 48), 0.5),
        "text": fit(data.text()),
        "photo": fit(data.camera()),
    }


@pytest.fixture(scope="module")
def composed(trained) -> SpatialVAE:
    """The trained model with its map put together as training's export does."""
    model = copy.deepcopy(trained)
    fit_patch_density(model.density, stripes(64, seed=0))
    choose_map(model, stripes(48, seed=3), seed=0)
    return model


@pytest.mark.parametrize("which", ["trained", "composed"])
def test_unrelated_inputs_score_above_the_threshold_of_normal_images(which, request):
    model = request.getfixturevalue(which)
    with torch.inference_mode():
        threshold = float(model.score(stripes(64, seed=2)).max())  # a strict calibration
        for name, image in unrelated().items():
            assert float(model.score(image)) > threshold, name
