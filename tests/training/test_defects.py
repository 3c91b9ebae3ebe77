import numpy as np
import pytest

from training.defects import KINDS, VISIBLE, draw_defect


def texture(side: int, channels: int, seed: int = 0) -> np.ndarray:
    """A busy, real-looking surface: smooth noise at two scales, (side, side, channels)."""
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.uniform(0.3, 0.7, (side // 8, side // 8, channels)), np.ones((8, 8, 1)))
    return np.clip(coarse + rng.normal(0, 0.05, (side, side, channels)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_a_defect_changes_the_image_where_its_mask_says_and_nowhere_else(kind, channels):
    image = texture(96, channels)
    defect = draw_defect(image, kind, np.random.default_rng(1), donor=texture(96, channels, 2))
    assert defect.image.shape == image.shape and defect.image.dtype == np.float32
    assert defect.image.min() >= 0.0 and defect.image.max() <= 1.0
    change = np.abs(defect.image - image).max(axis=2)
    assert defect.mask.sum() >= 2
    assert (change[defect.mask] > VISIBLE).all()
    assert (change[~defect.mask] <= VISIBLE).all()


def test_defects_are_reproducible_from_the_seed():
    image = texture(64, 1)
    first = draw_defect(image, "crack", np.random.default_rng(7))
    again = draw_defect(image, "crack", np.random.default_rng(7))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)


def test_defect_sizes_follow_the_image_size():
    small = [draw_defect(texture(64, 1), "hole", np.random.default_rng(s)) for s in range(8)]
    large = [draw_defect(texture(512, 1), "hole", np.random.default_rng(s)) for s in range(8)]
    small_share = np.mean([d.mask.mean() for d in small])
    large_share = np.mean([d.mask.mean() for d in large])
    assert large_share == pytest.approx(small_share, rel=0.6)  # a share of the image
    assert np.mean([d.mask.sum() for d in large]) > 20 * np.mean([d.mask.sum() for d in small])


def test_a_greyscale_image_may_come_without_a_channel_axis():
    image = texture(64, 1)[:, :, 0]
    defect = draw_defect(image, "scratch", np.random.default_rng(0))
    assert defect.image.shape == (64, 64, 1)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown defect kind"):
        draw_defect(texture(32, 1), "dent", np.random.default_rng(0))
