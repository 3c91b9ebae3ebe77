"""Turning a part upright: angles found on real photographs turned by Pillow."""

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from training.parts import part_image
from training.place import PlaceDensity, fit_place_density, turns
from training.register import (
    Registration,
    angles_of,
    coherence,
    disc,
    fit_registration,
    turn,
)
from training.textures import build_texture_set

SIZE = 48


@pytest.fixture(scope="module")
def coins() -> Image.Image:
    return part_image("coins", SIZE, 0, 180.0)


def view(part: Image.Image, degrees: float, gain: float = 1.0) -> torch.Tensor:
    """The part turned counter-clockwise by `degrees` (Pillow), its central SIZE px."""
    centre = part.width // 2
    half = SIZE // 2
    turned = part.rotate(degrees, Image.Resampling.BICUBIC)
    crop = turned.crop((centre - half, centre - half, centre + half, centre + half))
    return (torch.tensor(np.asarray(crop), dtype=torch.float32) / 255 * gain)[None, None]


def turned_views(part: Image.Image, count: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    degrees = np.random.default_rng(seed).uniform(-180, 180, count)
    return torch.cat([view(part, d) for d in degrees]), degrees


def spread_of(found: torch.Tensor, degrees: np.ndarray) -> float:
    """How far apart, in degrees, the uprights of the images are: a found angle plus the
    image's own turn is the same for every image when every angle is right."""
    upright = np.degrees(found.numpy()) + degrees
    return float(np.abs((upright - upright[0] + 180) % 360 - 180).max())


def test_it_finds_the_turn_of_every_view_to_within_a_degree(coins):
    images, _ = turned_views(coins, 60, seed=0)
    registration = fit_registration(Registration(), images)
    assert coherence(registration, images) > 0.9
    new, new_degrees = turned_views(coins, 20, seed=1)
    assert spread_of(angles_of(registration, new), new_degrees) < 1.0


def test_relighting_does_not_move_the_angle(coins):
    registration = fit_registration(Registration(), turned_views(coins, 30, seed=0)[0])
    dim, bright = view(coins, 70.0, gain=0.6), view(coins, 70.0, gain=1.2) + 0.05
    found = angles_of(registration, torch.cat((dim, bright)))
    assert abs(float(found[0] - found[1])) < math.radians(0.2)


def test_turning_by_the_found_angle_matches_the_views_inside_the_disc(coins):
    images, _ = turned_views(coins, 30, seed=0)
    registration = fit_registration(Registration(), images)
    upright = turn(images, angles_of(registration, images))
    inside = disc(SIZE, torch.float32, torch.device("cpu")).bool()
    spread = upright[..., inside].std(0).mean()
    assert float(spread) < 0.3 * float(images[..., inside].std(0).mean())
    assert float(upright[..., ~inside].abs().max()) == 0.0


def test_it_turns_the_way_pillow_does(coins):
    inside = disc(SIZE, torch.float32, torch.device("cpu"))
    ours = turn(view(coins, 0.0), torch.tensor([math.radians(30.0)]))
    pillows = view(coins, 30.0) * inside
    assert float((ours - pillows).abs().sum() / inside.sum()) < 0.03


def test_a_loose_part_is_turned_a_surface_is_not_and_the_log_says_why(coins):
    images, _ = turned_views(coins, 80, seed=0)
    said: list[str] = []
    assert turns(fit_place_density(PlaceDensity(1), images, log=said.append))
    brick = build_texture_set("brick", size=SIZE, train=80, normal=1, per_kind=1, fresh=1)
    assert not turns(fit_place_density(PlaceDensity(1), brick.train, log=said.append))
    assert not turns(fit_place_density(PlaceDensity(1), images[..., :-4], log=said.append))
    assert len(said) == 2  # a frame that is not square has nothing to decide
    assert re.fullmatch(
        r"density per place: turned upright \(rings agree [01]\.\d\d; upright, 0\.\d\d of the "
        r"plain residual on held-out training images is left; at most 0\.75 turns\)",
        said[0],
    ), said[0]
    assert re.fullmatch(
        r"density per place: not turned upright \(rings agree -?0\.\d\d, below 0\.5\)", said[1]
    ), said[1]


def test_the_map_of_a_turned_part_stays_in_the_uploads_frame(coins):
    images, _ = turned_views(coins, 80, seed=0)
    density = fit_place_density(PlaceDensity(1), images)
    new = view(coins, 123.0)
    spot = new.clone()
    spot[..., 10:14, 30:34] = 1.0 - spot[..., 10:14, 30:34]  # a flaw up and to the right
    with torch.inference_mode():
        difference = density(spot) - density(new)
    peak = divmod(int(difference.flatten().argmax()), SIZE)
    assert 8 <= peak[0] <= 15 and 28 <= peak[1] <= 35
    # a corner, outside the disc, has no evidence: it reads as a normal place does
    assert float(density(new)[..., 0, 0]) == 1.0


def test_the_scripted_turning_density_computes_what_the_eager_one_does(coins, tmp_path):
    images, _ = turned_views(coins, 40, seed=0)
    density = fit_place_density(PlaceDensity(1), images)
    assert turns(density)
    torch.jit.save(torch.jit.script(density), tmp_path / "place.pt")
    x = turned_views(coins, 3, seed=2)[0]
    loaded = torch.jit.load(tmp_path / "place.pt")
    assert torch.allclose(loaded(x), density(x), atol=1e-4)
