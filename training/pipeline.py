"""One training run from data to verified artifact: what `python -m training` does.

    load -> filter classes -> split -> train -> evaluate -> calibrate -> export

The split is three-way: training, validation (the best checkpoint) and calibration (the
anomaly threshold, `training.calibrate`); each image is in exactly one.

The anomaly protocol (`training.anomaly`) runs the same steps once per digit. Under
torchrun every rank loads, trains and evaluates its share, and rank 0 alone calibrates
and exports (`training.distributed`). `--max-minutes` bounds all of it
(`training.budget`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from app.artifact import Calibration
from training import distributed
from training.budget import Budget
from training.calibrate import calibrate, calibration_advice, score_images
from training.config import DEFAULT_WORK_SIDE, TrainConfig
from training.data import load_images, native_size
from training.dataset import ImageSet, fingerprint, hold_out, select_classes
from training.density import PATCH, PatchDensity, fit_patch_density
from training.distributed import ALONE, World
from training.errors import ConfigError, DataError
from training.export import build_metadata, export_artifact
from training.metrics import (
    EvalPlan,
    LikelihoodSums,
    bits_per_dim,
    format_seconds,
    likelihood_sums,
    metrics_from,
    plan_evaluation,
)
from training.model import VAE, ModelConfig
from training.place import PlaceDensity, centres, directions, fit_place_density, turns
from training.prior import fit_sampling_prior
from training.progress import ProgressMeter
from training.samples import draw_samples, features, frechet_distance, sample_quality
from training.selection import SIGMAS, choose_map
from training.spatial import SpatialVAE
from training.train import (
    Log,
    TrainResult,
    after_evaluation_seconds,
    resolve_device,
    seconds_per_image,
    train,
)

METRICS_FILE = "metrics.json"
TIMED_IMAGES = 8  # validation images the densities' maps are timed on, for the budget

if TYPE_CHECKING:
    from training.model import AnyVAE


@dataclass(frozen=True)
class PreparedData:
    train: ImageSet
    val: ImageSet  # drives best-checkpoint selection
    calibration: ImageSet  # sets the anomaly threshold, and nothing else
    fingerprint: str  # of the training split
    work_size: tuple[int, int] | None = None  # (height, width) a spatial model works at


@dataclass(frozen=True)
class FitResult:
    model: AnyVAE  # the best weights, on the CPU, eval mode
    model_config: ModelConfig
    artifact: Path
    metrics: dict[str, float]
    calibration: Calibration


def prepare_data(config: TrainConfig, images: ImageSet | None = None) -> PreparedData:
    """Load `config.data` (or take `images`), keep `config.classes`, split deterministically.
    A spatial model's images are loaded at its working size (`working_size`)."""
    size = None
    if config.architecture == "spatial":
        native = native_size(config.data) if images is None else tuple(images.images.shape[2:])
        size = working_size(config, (int(native[0]), int(native[1])))
    if images is None:
        images = load_images(config.data, size or config.image_size, config.channels)
    elif size is not None and tuple(images.images.shape[2:]) != size:
        raise DataError(f"images of {tuple(images.images.shape[2:])} px, expected {size}")
    if config.classes is not None:
        images = select_classes(images, config.classes)
    fractions = (config.val_fraction, config.calibration_fraction)
    train_set, val_set, calibration_set = hold_out(images, fractions, config.seed)
    return PreparedData(train_set, val_set, calibration_set, fingerprint(train_set), size)


def working_size(config: TrainConfig, native: tuple[int, int]) -> tuple[int, int]:
    """(height, width) a spatial model works at: the data's `native` size scaled so that
    its long side is `--image-size` (0: its own, at most `DEFAULT_WORK_SIDE`), each side
    rounded to a multiple of the model's stride, and at least the training crop."""
    stride = 2 ** len(config.hidden)
    long_side = config.image_size or min(max(native), DEFAULT_WORK_SIDE)
    scale = long_side / max(native)
    size = tuple(max(stride, round(side * scale / stride) * stride) for side in native)
    if min(size) < config.crop:
        raise ConfigError(
            f"--crop {config.crop} does not fit in the working size {size[0]}x{size[1]}; "
            "choose a smaller --crop or a larger --image-size"
        )
    return (size[0], size[1])


def fit_and_export(
    config: TrainConfig, data: PreparedData, log: Log = print, isolated_check: bool = True
) -> FitResult:
    """Train on `data`, measure, calibrate, export and verify the artifact."""
    budget = Budget(config.max_minutes)
    result = fit(config, data, log, budget=budget)
    measured = measure(config, data, result, budget, log)
    return export(config, data, result, measured, log, isolated_check)


def _log_now(line: str) -> None:
    print(line, flush=True)  # ranks share torchrun's stdout: unflushed lines can be lost


def run(config: TrainConfig, log: Log = _log_now, started: float | None = None) -> FitResult | None:
    """`python -m training`, within `--max-minutes` of `started` (default: now). Under
    torchrun every rank trains on its shards and evaluates its share of the validation
    images, then rank 0 calibrates and exports while the others return None at once."""
    now = time.monotonic()
    started = now if started is None else started
    budget = Budget(config.max_minutes, started, startup=now - started)
    world = distributed.current()
    device = world.rank_device(resolve_device(config.device))
    timeout = timedelta(minutes=config.dist_timeout_minutes)
    with distributed.process_group(world, device, timeout):
        data = prepare_data(config)
        main_log = world.main_only(log)
        for line in describe_run(config, data):
            main_log(line)
        result = fit(config, data, main_log, world, budget)
        if world.size > 1:  # every rank, so that its shard shows
            log(
                f"rank {world.rank} of {world.size} trained on {result.images_trained} images, "
                f"its shards of {len(data.train)} per epoch"
            )
        measured = measure(config, data, result, budget, main_log, world)
        if not world.is_main:  # nothing left to share: no rank waits on rank 0's export
            log(f"rank {world.rank} of {world.size}: done; rank 0 calibrates and exports")
            return None
        exporting = time.monotonic()
        fitted = export(config, data, result, measured, log, world_size=world.size)
        log(
            f"exported in {format_seconds(time.monotonic() - exporting)}; "
            f"{format_seconds(budget.elapsed())} in all"
            + (f" of --max-minutes {config.max_minutes}" if budget.bounded else "")
        )
    return fitted


def describe_run(config: TrainConfig, data: PreparedData) -> list[str]:
    """What the run found and where it writes: the data, its labels per class, the outputs."""
    shape = data.train.images.shape
    colour = "RGB" if shape[1] == 3 else "grayscale"
    splits = (data.train, data.val, data.calibration)
    count = sum(len(images) for images in splits)
    lines = [f"data: {config.data}, {count} images at {shape[2]}x{shape[3]} {colour}"]
    is_folder = Path(config.data).is_dir()
    every_label = [images.labels for images in splits if images.labels is not None]
    if len(every_label) < len(splits):
        lines.append(
            "labels: none (a folder's images are labelled when each sits in an "
            "integer-named subfolder, e.g. 3/a.png)"
            if is_folder
            else "labels: none"
        )
    else:
        labels, counts = torch.cat(every_label).unique(return_counts=True)
        origin = "the subfolder names" if is_folder else "the data"
        kept = "" if config.classes is None else " (kept by --classes)"
        per_class = ", ".join(f"{int(v)}: {int(c)}" for v, c in zip(labels, counts, strict=True))
        lines.append(f"labels from {origin}{kept}, images per class: {per_class}")
    lines.append(
        f"outputs: checkpoints and {METRICS_FILE} in {config.checkpoint_path}/, "
        f"the artifact in {config.artifact_path}/"
    )
    return lines


def fit(
    config: TrainConfig,
    data: PreparedData,
    log: Log = print,
    world: World = ALONE,
    budget: Budget | None = None,
) -> TrainResult:
    """Train on `data.train`, keeping the weights that do best on `data.val`; first check
    that `data.calibration` can keep the requested false-alarm rate."""
    advice = calibration_advice(len(data.calibration), config.false_alarm_rate)
    log(
        f"training on {len(data.train)} images, validating on {len(data.val)}, "
        f"calibrating on {len(data.calibration)}"
    )
    if advice:
        log(advice)
    model_config = config.model_config(data.train.channels, data.work_size)
    densities = _fit_densities(config, data, log) if world.is_main else None
    map_seconds = 0.0 if densities is None else map_image_seconds(*densities, data.val.images)
    result = train(
        config, model_config, data.train, data.val, data.fingerprint, log, world, budget,
        map_image_seconds=map_seconds,
    )  # fmt: skip
    if densities is not None and isinstance(result.model, SpatialVAE):
        device = next(result.model.parameters()).device
        result.model.density = densities[0].to(device)
        result.model.place = densities[1].to(device)
    return result


def _fit_densities(
    config: TrainConfig, data: PreparedData, log: Log
) -> tuple[PatchDensity, PlaceDensity] | None:
    """A spatial model's patch density and density per place, fitted on the training
    images before training: their time then comes out of the training's share of the
    budget, as it should, with nothing to estimate (they depend on the images only,
    never on the weights)."""
    if config.architecture != "spatial":
        return None
    started = time.monotonic()
    images = data.train.images
    density = fit_patch_density(PatchDensity(data.train.channels), images, config.seed)
    place = fit_place_density(PlaceDensity(data.train.channels), images, config.seed, log)
    upright = ", each image turned upright first" if turns(place) else ""
    upright += " about its own centre" if centres(place) else ""
    log(
        f"patch density: one Gaussian and a mixture of {density.components} of the "
        f"training images' {PATCH}x{PATCH} patches, and a Gaussian of the images per place "
        f"({directions(place)} principal directions{upright}), fitted in "
        f"{format_seconds(time.monotonic() - started)}"
    )
    return density, place


def map_image_seconds(density: PatchDensity, place: PlaceDensity, images: Tensor) -> float:
    """Seconds per image of the maps the densities add after training (to choose the
    map's mix and to calibrate), timed on a few validation images: on large loose parts
    the patch mixture and the search for each part's centre cost more than the network,
    and the budget has to hold them back from training."""
    return seconds_per_image(lambda x: (density(x, True), place(x)), images[:TIMED_IMAGES])


# each map alone, for the log line of the choice
ALONE_SHARES = {
    "map head": (0.0, 0.0, 0.0),
    "rare": (1.0, 0.0, 0.0),
    "plain": (0.0, 1.0, 0.0),
    "place": (0.0, 0.0, 1.0),
}


def measure(
    config: TrainConfig,
    data: PreparedData,
    result: TrainResult,
    budget: Budget,
    log: Log = print,
    world: World = ALONE,
) -> dict[str, float]:
    """Negative ELBO and IWAE on the validation split, each rank on its share, in the
    time the budget leaves (fewer draws, or fewer images, when it would not fit)."""
    images = world.stride(data.val.images)
    row_seconds = 0.0 if math.isnan(result.row_seconds) else result.row_seconds  # no epoch run
    calibration_seconds = 2 * config.score_samples * len(data.calibration) * row_seconds
    pixels = math.prod(data.val.images.shape[2:])
    after_seconds = after_evaluation_seconds(
        config, len(data.val), row_seconds, result.map_image_seconds, pixels
    )
    seconds_left = budget.left() - budget.export_reserve() - calibration_seconds - after_seconds
    plan, note = plan_evaluation(len(images), config.iwae_samples, row_seconds, seconds_left)
    elbo, k, left = world.from_main([plan.elbo_samples, plan.iwae_samples, seconds_left])
    plan = EvalPlan(int(elbo), int(k), time.monotonic() + left)
    if note:
        log(note)
    log(
        f"evaluating: negative ELBO ({plan.elbo_samples} draws) and IWAE (k={plan.iwae_samples}) "
        f"on the {len(data.val)} validation images"
    )
    meter = ProgressMeter(len(images), "evaluating", log, enabled=world.is_main)
    sums = likelihood_sums(result.model, images, plan, config.seed, meter.update)
    meter.close()
    total = world.sum([sums.nelbo, sums.iwae, float(sums.images)])
    sums = LikelihoodSums(total[0], total[1], int(total[2]))
    if sums.images < len(data.val):
        log(
            f"evaluation: --max-minutes reached after {sums.images} of {len(data.val)} "
            "validation images; the metrics are over those"
        )
    metrics = metrics_from(sums, plan)
    if config.likelihood == "gaussian":  # a density: also in the unit of image models
        dims = math.prod(data.val.images.shape[1:])
        for name in ("val_nelbo", "val_iwae_nll"):
            metrics[f"{name}_bits_per_dim"] = bits_per_dim(metrics[name], dims)
    return metrics | result.metrics() | {"train_images": float(len(data.train))}


def export(
    config: TrainConfig,
    data: PreparedData,
    result: TrainResult,
    metrics: dict[str, float],
    log: Log = print,
    isolated_check: bool = True,
    world_size: int = 1,
) -> FitResult:
    """Calibrate the trained model's score, export and verify the artifact."""
    model_config = config.model_config(data.train.channels, data.work_size)
    model = copy.deepcopy(result.model).cpu()  # the artifact and its calibration run on CPU
    if isinstance(model, SpatialVAE):
        model_config, metrics = _compose_map(config, data, model, model_config, metrics, log)
    scores = score_images(model.score, data.calibration.images)
    calibration = calibrate(scores, model_config, config.false_alarm_rate)
    prior_components = 0  # a spatial model samples every latent cell from N(0, I)
    if isinstance(model, VAE):
        metrics = metrics | fit_and_measure_prior(config, data, model, calibration.threshold, log)
        prior_components = int(model.prior_cdf.shape[0])
    metadata = build_metadata(
        config,
        model_config,
        calibration,
        metrics,
        data.fingerprint,
        world_size,
        prior_components=prior_components,
    )
    artifact = export_artifact(
        model,
        metadata,
        config.artifact_path,
        calibration_images=data.calibration.images,
        calibration_scores=scores,
        isolated_check=isolated_check,
    )
    write_json(config.checkpoint_path / METRICS_FILE, {"name": config.run_name, **metrics})
    return FitResult(model, model_config, artifact, metrics, calibration)


def _compose_map(
    config: TrainConfig,
    data: PreparedData,
    model: SpatialVAE,
    model_config: ModelConfig,
    metrics: dict[str, float],
    log: Log,
) -> tuple[ModelConfig, dict[str, float]]:
    """Choose the map's smoothing (unless --map-sigma is given) and the shares of the map
    head's and the patch density's evidence (fitted before training) on the validation
    images with synthetic defects."""
    sigmas = SIGMAS if config.map_sigma is None else (config.map_sigma,)
    choice = choose_map(model, data.val.images, config.seed, sigmas)
    rare, plain, place = choice.share
    alone = ", ".join(
        f"{name} alone {100 * choice.auroc[(choice.sigma, share)]:.1f}%"
        for name, share in ALONE_SHARES.items()
    )
    log(
        f"anomaly map: smoothing {choice.sigma:g} px, shares: map head "
        f"{1 - rare - plain - place:g}, rare patches {rare:g}, plain patches {plain:g}, "
        f"place {place:g} (validation AUROC on synthetic defects {100 * choice.best:.1f}%; "
        f"{alone})"
    )
    chosen = {
        "map_sigma": choice.sigma,
        "rare_share": rare,
        "plain_share": plain,
        "place_share": place,
        "val_synthetic_auroc": choice.best,
        "patch_components": float(model.density.components),
        "place_directions": float(directions(model.place)),
        "place_turns": float(turns(model.place)),
        "place_centres": float(centres(model.place)),
    }
    return replace(model_config, map_sigma=choice.sigma), metrics | chosen


def fit_and_measure_prior(
    config: TrainConfig, data: PreparedData, model: VAE, threshold: float, log: Log = print
) -> dict[str, float]:
    """Fit the sampling prior into `model` (`training.prior`) and measure the samples
    it gives against those of N(0, I) (`training.samples`): the figures for model.json."""
    dim, count, seed = model.latent_dim, len(data.val), config.seed
    standard = draw_samples(model.decode, None, count, dim, seed)
    figures = {
        "data_fd": frechet_distance(features(data.train.images[:count]), features(data.val.images))
    }
    quality = {"standard_normal": sample_quality(standard, data.val.images, model.score, threshold)}
    if config.prior_components > 0:
        fit_sampling_prior(model, data.train.images, config.prior_components, seed)
        fitted = draw_samples(model.decode, model.prior_latents, count, dim, seed)
        quality["mixture"] = sample_quality(fitted, data.val.images, model.score, threshold)
    for name, measured in quality.items():
        figures[f"sample_normal_share_{name}"] = measured.normal_share
        figures[f"sample_fd_{name}"] = measured.fd
    shipped = quality.get("mixture", quality["standard_normal"])
    figures["sample_normal_share"], figures["sample_fd"] = shipped.normal_share, shipped.fd
    log(
        "samples: "
        + "; ".join(
            f"{name.replace('_', ' ')}: {100 * q.normal_share:.1f}% scored normal, FD {q.fd:.3g}"
            for name, q in quality.items()
        )
        + f" (held-out images: FD {figures['data_fd']:.3g} from the training images)"
    )
    return figures


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
