"""The texture benchmark: defect detection on real surfaces, with pixel masks.

`python -m training.evaluate textures` (and `make anomaly-eval`). For each texture
photograph that scikit-image ships inside its wheel (nothing is downloaded):

    normal     1,000 random crops of the top 5/8 of the photograph: the training images
               (60% train, 20% validate, 20% calibrate: 200 calibration images, enough
               for a 1% false-alarm rate)
    held out   random crops of the bottom 3/8, never seen in training: the normal test
               images, and as many more with one synthetic defect each (`training.defects`:
               scratch, crack, hole, stain, missing, paste, in turn), with its pixel mask
    fresh      600 more random crops of the top 5/8, drawn apart from the training crops:
               new normal images exchangeable with the calibration images, as new photos
               of the same kind of surface would be

and reports, per texture and defect kind, the image AUROC, the pixel AUROC of the heat
map, the recall at the calibrated threshold and the false-alarm rate measured on the
fresh normal images (what the calibration promises) and on the held-out normal test
images (the bottom of a photograph is not always the same surface: brick's bricks grow
larger towards the bottom, in perspective), for the inspection preset and, in the same
run, for the baselines:

    brightness    |mean brightness - the training mean| (map: |pixel - mean training image|)
    pca           reconstruction error on raw pixels with the components that hold 90% of
                  the training variance (map: the squared error per pixel)
    whole-image   the VAE of `python -m training --image-size 64 --likelihood gaussian`,
                  its own `score` (map: its per-pixel nll, resized)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import Tensor

from app.artifact import ModelMetadata, Preprocessing
from app.preprocessing import to_pixels, to_tensor
from training.defects import KINDS, draw_defect
from training.roc import auroc

GREY = ("brick", "grass", "gravel")
COLOUR = ("immunohistochemistry", "hubble_deep_field")
TEXTURES = GREY + COLOUR
TRAIN_SHARE = 5 / 8  # of the photograph's height: the training region, on top
MODEL_BATCH = 16  # crops per model call
PIXEL_STRIDE = 2  # pixel AUROC on every second row and column: the same figure, 4x cheaper


@dataclass(frozen=True)
class TextureSet:
    name: str
    train: Tensor  # (N, C, S, S) normal crops of the training region, float in [0, 1]
    normal: Tensor  # (M, C, S, S) normal crops of the held-out region
    defective: Tensor  # (K, C, S, S) held-out crops with one defect each
    masks: Tensor  # (K, S, S) bool
    kinds: tuple[str, ...]  # (K,) the defect kind of each
    fresh: Tensor  # (F, C, S, S) more normal crops of the training region, not trained on


def photograph(name: str) -> np.ndarray:
    """A scikit-image photograph as float32 (H, W, C) in [0, 1] (C = 1 or 3)."""
    try:
        from skimage import data  # the 'train' extra; pinned below 0.26, which downloads them
    except ImportError:
        raise ImportError(
            "the texture benchmark needs scikit-image: pip install -e '.[train]'"
        ) from None
    pixels = getattr(data, name)().astype(np.float32) / 255.0
    return pixels[:, :, None] if pixels.ndim == 2 else pixels[:, :, :3]


def _crops(image: np.ndarray, rows: tuple[int, int], count: int, size: int, rng) -> np.ndarray:
    tops = rng.integers(rows[0], rows[1] - size + 1, count)
    lefts = rng.integers(0, image.shape[1] - size + 1, count)
    return np.stack([image[t : t + size, x : x + size] for t, x in zip(tops, lefts, strict=True)])


def as_tensor(pixels: np.ndarray) -> Tensor:
    """Images (N, H, W, C) as a tensor (N, C, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()


def draw_defects(
    bases: np.ndarray, rng: np.random.Generator, donor: np.ndarray
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """One defect on each of `bases` (N, H, W, C), the kinds in turn, quantised to 8 bits
    as uploads are; `donor` feeds `paste`: the images (N, C, H, W), masks, kinds."""
    kinds = tuple(KINDS[i % len(KINDS)] for i in range(len(bases)))
    drawn = [
        draw_defect(base, kind, rng, donor=donor) for base, kind in zip(bases, kinds, strict=True)
    ]
    defective = np.stack([np.round(d.image * 255.0) / 255.0 for d in drawn]).astype(np.float32)
    return as_tensor(defective), torch.from_numpy(np.stack([d.mask for d in drawn])), kinds


def build_texture_set(
    name: str,
    size: int = 128,
    train: int = 1000,
    normal: int = 120,
    per_kind: int = 40,
    seed: int = 0,
    fresh: int = 600,
) -> TextureSet:
    """Crops of photograph `name`, quantised to 8 bits as uploads are, and the defects."""
    rng = np.random.default_rng(seed)
    image = np.round(photograph(name) * 255.0) / 255.0
    split_row = round(image.shape[0] * TRAIN_SHARE)
    held_out = (split_row, image.shape[0])
    normal_crops = _crops(image, held_out, normal, size, rng)
    bases = _crops(image, held_out, per_kind * len(KINDS), size, rng)
    defective, masks, kinds = draw_defects(bases, rng, donor=image[:split_row])
    training = as_tensor(_crops(image, (0, split_row), train, size, rng))
    return TextureSet(
        name=name,
        train=training,
        normal=as_tensor(normal_crops),
        defective=defective,
        masks=masks,
        kinds=kinds,
        fresh=as_tensor(_crops(image, (0, split_row), fresh, size, rng)),
    )


@dataclass
class Scores:
    """One method's evidence on a texture set: image scores and heat maps (N, S, S)."""

    normal: Tensor
    defective: Tensor
    normal_maps: Tensor
    defective_maps: Tensor
    threshold: float | None = None  # the method's calibrated threshold, when it has one
    fresh: Tensor | None = None  # scores of the fresh normal images, with a threshold


@dataclass
class Result:
    method: str
    image_auroc: float
    pixel_auroc: float
    per_kind: dict[str, float] = field(default_factory=dict)
    recall: float | None = None  # defective images above the threshold
    false_alarm_rate: float | None = None  # held-out normal test images above the threshold
    fresh_false_alarm_rate: float | None = None  # fresh normal images above it


def measure(method: str, scores: Scores, data: TextureSet) -> Result:
    """The figures of `scores` on `data`."""
    kinds = np.array(data.kinds)
    per_kind = {
        kind: auroc(scores.normal, scores.defective[torch.from_numpy(kinds == kind)])
        for kind in KINDS
    }
    result = Result(
        method,
        auroc(scores.normal, scores.defective),
        pixel_auroc(scores.normal_maps, scores.defective_maps, data.masks),
        per_kind,
    )
    if scores.threshold is not None:
        result.recall = float((scores.defective > scores.threshold).double().mean())
        result.false_alarm_rate = float((scores.normal > scores.threshold).double().mean())
    if scores.threshold is not None and scores.fresh is not None:
        result.fresh_false_alarm_rate = float((scores.fresh > scores.threshold).double().mean())
    return result


def pixel_auroc(normal_maps: Tensor, defective_maps: Tensor, masks: Tensor) -> float:
    """AUROC of defect pixels against every normal pixel (of normal and defective images)."""
    s = PIXEL_STRIDE
    grid = masks[:, ::s, ::s]
    negatives = torch.cat(
        [normal_maps[:, ::s, ::s].flatten(), defective_maps[:, ::s, ::s][~grid].flatten()]
    )
    return auroc(negatives, defective_maps[masks].flatten())


def smooth_map(maps: Tensor, sigma: float = 2.0) -> Tensor:
    """Baseline maps get the same kind of smoothing the inspection model's do: (N, S, S)."""
    radius = max(1, round(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps[:, None].float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


def brightness_baseline(data: TextureSet) -> Scores:
    mean_image = data.train.mean(0)  # (C, S, S)
    level = data.train.mean(dim=(1, 2, 3))
    centre, spread = level.mean(), level.std().clamp(min=1e-6)

    def score(x: Tensor) -> Tensor:
        return (x.mean(dim=(1, 2, 3)) - centre).abs() / spread

    def heat(x: Tensor) -> Tensor:
        return smooth_map((x - mean_image).abs().sum(1))

    return Scores(
        score(data.normal), score(data.defective), heat(data.normal), heat(data.defective)
    )


def pca_baseline(data: TextureSet, variance: float = 0.9) -> Scores:
    flat = data.train.flatten(1).double()
    mean = flat.mean(0)
    _, singular, components = torch.linalg.svd(flat - mean, full_matrices=False)
    share = torch.cumsum(singular**2, 0) / (singular**2).sum()
    basis = components[: int((share < variance).sum()) + 1]  # (k, C*S*S)

    def residual(x: Tensor) -> Tensor:
        centred = x.flatten(1).double() - mean
        error = centred - (centred @ basis.T) @ basis
        return (error**2).view_as(x).sum(1).float()  # (N, S, S)

    normal, defective = residual(data.normal), residual(data.defective)
    return Scores(
        normal.flatten(1).sum(1),
        defective.flatten(1).sum(1),
        smooth_map(normal),
        smooth_map(defective),
    )


def model_input(x: Tensor, preprocessing: Preprocessing, size: tuple[int, int]) -> Tensor:
    """Crops (N, C, S, S) in [0, 1] as the service would feed them to a model: each as an
    8-bit image through `app.preprocessing` (mode, resize to `size` = (width, height))."""
    pixels = (x.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).numpy()
    images = [Image.fromarray(p[:, :, 0] if p.shape[2] == 1 else p) for p in pixels]
    converted = [to_pixels(image, preprocessing.color_mode, size)[0] for image in images]
    return to_tensor(np.stack(converted), preprocessing)


def artifact_scores(
    module: torch.jit.ScriptModule, metadata: ModelMetadata, data: TextureSet
) -> Scores:
    """An artifact's own `score` and heat map (`anomaly_map`, else its channel-summed
    `pixel_nll`) resized back to the crops' size, with its calibrated threshold."""

    def evidence(inputs: Tensor) -> tuple[Tensor, Tensor]:
        if hasattr(module, "anomaly_map"):
            return module.score(inputs), module.anomaly_map(inputs)
        return module.score(inputs), module.pixel_nll(inputs).sum(1, keepdim=True)

    scores = _run(evidence, metadata, data)
    scores.threshold = metadata.calibration.threshold
    with torch.inference_mode():
        scores.fresh = torch.cat([module.score(x) for _, x in _inputs(data.fresh, metadata)])
    return scores


def vae_map_scores(
    module: torch.jit.ScriptModule, metadata: ModelMetadata, data: TextureSet
) -> dict[str, Scores]:
    """Two other maps of the same spatial artifact, for comparison with its map head:
    the reconstruction nll per pixel, and the KL of each latent cell (what it costs to
    encode that place), each smoothed like the baselines; the score is the map's peak."""
    stride = metadata.height // _cells(metadata)[1]

    def recon(inputs: Tensor) -> tuple[Tensor, Tensor]:
        heat = smooth_map(module.pixel_nll(inputs).sum(1))[:, None]
        return heat.flatten(1).amax(1), heat

    def kl(inputs: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = module.encode(inputs)
        cells = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
        per_cell = cells.view(len(inputs), *_cells(metadata)).sum(1, keepdim=True)
        heat = F.interpolate(per_cell, scale_factor=float(stride), mode="bilinear")
        heat = smooth_map(heat[:, 0])[:, None]
        return heat.flatten(1).amax(1), heat

    return {
        "VAE reconstruction nll map": _run(recon, metadata, data),
        "VAE latent KL map": _run(kl, metadata, data),
    }


def _cells(metadata: ModelMetadata) -> tuple[int, int, int]:
    """(L, h, w) of a spatial artifact's latent map, from its size and latent_dim."""
    channels = metadata.training["model_config"]["latent_channels"]
    stride = 2 ** len(metadata.training["model_config"]["hidden"])
    return channels, metadata.height // stride, metadata.width // stride


def _run(
    evidence: Callable[[Tensor], tuple[Tensor, Tensor]], metadata: ModelMetadata, data: TextureSet
) -> Scores:
    """`evidence` (inputs at the model's size -> scores (N,), maps (N, 1, H, W)) on every
    test crop, fed as the service would; maps resized back to the crops' size."""

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        scores, maps = [], []
        for batch, inputs in _inputs(x, metadata):
            score, heat = evidence(inputs)
            scores.append(score)
            maps.append(F.interpolate(heat, size=tuple(batch.shape[2:]), mode="bilinear")[:, 0])
        return torch.cat(scores), torch.cat(maps)

    with torch.inference_mode():
        normal, normal_maps = run(data.normal)
        defective, defective_maps = run(data.defective)
    return Scores(normal, defective, normal_maps, defective_maps)


def _inputs(x: Tensor, metadata: ModelMetadata) -> Iterator[tuple[Tensor, Tensor]]:
    """Crops `x` in batches, each with the model's input for it, as the service feeds it."""
    size = (metadata.width, metadata.height)
    for batch in x.split(MODEL_BATCH):
        yield batch, model_input(batch, metadata.preprocessing, size)
