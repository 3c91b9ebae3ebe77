"""Data sources and the in-memory set: layouts, folders, class filter, split, fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import load_images
from training.dataset import ImageSet, fingerprint, select_classes, split
from training.errors import DataError


def test_the_builtin_mnist_is_5000_labelled_digits() -> None:
    mnist = load_images("mnist", 28)
    assert mnist.images.shape == (5000, 1, 28, 28)
    assert mnist.images.dtype == torch.float32
    assert mnist.images.min() == 0.0 and mnist.images.max() == 1.0
    assert mnist.labels is not None
    assert torch.bincount(mnist.labels).tolist() == [500] * 10


def test_an_npz_of_uint8_images_loads_with_its_labels(npz_file: Path, synthetic) -> None:
    loaded = load_images(str(npz_file), 28)
    assert torch.equal(loaded.images, synthetic.images)
    assert torch.equal(loaded.labels, synthetic.labels)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((5, 30, 30), np.uint8), ((5, 30, 30, 3), np.float32), ((5, 3, 30, 30), np.float64)],
)
def test_every_documented_npz_layout_loads(tmp_path: Path, shape, dtype) -> None:
    pixels = np.full(shape, 255 if dtype == np.uint8 else 1.0, dtype=dtype)
    path = tmp_path / "x.npz"
    np.savez(path, images=pixels)
    for channels in (1, 3):
        loaded = load_images(str(path), 32, channels)
        assert loaded.images.shape == (5, channels, 32, 32)
        assert torch.allclose(loaded.images, torch.ones(1), atol=1e-5)
        assert loaded.labels is None


def test_rgb_becomes_grayscale_with_pillows_luma(tmp_path: Path) -> None:
    pixels = np.zeros((1, 28, 28, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red
    np.savez(tmp_path / "red.npz", images=pixels)
    gray = load_images(str(tmp_path / "red.npz"), 28, channels=1)
    expected = Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0)) / 255
    assert abs(float(gray.images.mean()) - expected) < 1 / 255


def test_a_folder_is_read_recursively_resized_and_labelled(tmp_path: Path) -> None:
    (tmp_path / "0" / "deep").mkdir(parents=True)
    (tmp_path / "1").mkdir()
    Image.new("L", (40, 40), 255).save(tmp_path / "0" / "a.png")
    Image.new("L", (28, 28), 0).save(tmp_path / "0" / "deep" / "b.PNG")
    Image.new("RGB", (50, 30), (0, 0, 255)).save(tmp_path / "1" / "c.jpg")
    (tmp_path / "1" / "notes.txt").write_text("not an image")
    loaded = load_images(str(tmp_path), 32)
    assert loaded.images.shape == (3, 3, 32, 32)  # one RGB image makes the set RGB
    assert loaded.labels.tolist() == [0, 0, 1]
    assert torch.allclose(loaded.images[0], torch.ones(1))
    gray = load_images(str(tmp_path), 28, channels=1)
    assert gray.images.shape == (3, 1, 28, 28)


def test_a_folder_without_numbered_subfolders_has_no_labels(tmp_path: Path) -> None:
    Image.new("L", (28, 28), 128).save(tmp_path / "a.png")
    loaded = load_images(str(tmp_path), 28)
    assert loaded.labels is None and loaded.images.shape == (1, 1, 28, 28)


def test_class_filter_keeps_only_the_requested_labels(synthetic: ImageSet) -> None:
    ones = select_classes(synthetic, (1,))
    assert len(ones) == 48 and set(ones.labels.tolist()) == {1}
    assert len(select_classes(synthetic, (0, 1))) == len(synthetic)


def test_an_empty_class_filter_is_an_error(synthetic: ImageSet) -> None:
    with pytest.raises(DataError, match="matches no image"):
        select_classes(synthetic, (7,))
    with pytest.raises(DataError, match="needs labels"):
        select_classes(ImageSet(synthetic.images), (0,))


def test_the_split_is_seeded_disjoint_and_complete(synthetic: ImageSet) -> None:
    tagged = ImageSet(synthetic.images, torch.arange(len(synthetic)))  # labels as ids
    train, val = split(tagged, 0.25, seed=3)
    again_train, again_val = split(tagged, 0.25, seed=3)
    assert len(val) == 24 and len(train) == 72
    assert torch.equal(train.labels, again_train.labels)
    assert torch.equal(val.labels, again_val.labels)
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(96))
    assert not torch.equal(split(tagged, 0.25, seed=4)[1].labels, val.labels)


def test_the_fingerprint_follows_pixels_and_labels(synthetic: ImageSet) -> None:
    reference = fingerprint(synthetic)
    assert reference == fingerprint(ImageSet(synthetic.images.clone(), synthetic.labels.clone()))
    nudged = synthetic.images.clone()
    nudged[0, 0, 0, 0] += 1 / 255
    assert fingerprint(ImageSet(nudged, synthetic.labels)) != reference
    assert fingerprint(ImageSet(synthetic.images, 1 - synthetic.labels)) != reference
    assert len(reference) == 64


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.npz", "dataset not found"),
        (lambda p: _write(p / "bad.npz", b"not a zip file"), "not a readable .npz"),
        (lambda p: _npz(p / "none.npz", pixels=np.zeros((2, 28, 28))), "no 'images' array"),
        (lambda p: _npz(p / "f.npz", images=np.full((2, 28, 28), 2.0)), "must lie in"),
        (lambda p: _npz(p / "s.npz", images=np.zeros((2, 28))), "has shape"),
        (lambda p: _write(p / "data.csv", b"1,2"), "unsupported data file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no PNG or JPEG"),
        (lambda p: _write(p / "dir" / "broken.png", b"garbage"), "unreadable image"),
    ],
)
def test_bad_data_is_a_one_line_data_error(tmp_path: Path, make, message: str) -> None:
    target = make(tmp_path)
    source = target.parent if target.name == "broken.png" else target
    with pytest.raises(DataError, match=message) as raised:
        load_images(str(source), 28)
    assert "\n" not in str(raised.value)


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path
