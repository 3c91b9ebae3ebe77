"""The training loop: Adam on the negative ELBO, with the known cures for KL vanishing.

loss = reconstruction (the model's likelihood: Bernoulli BCE, or Gaussian with a
learned variance) + beta * warm-up * KL, where KL is summed over latent dimensions
after a per-dimension free-bits floor on its batch average. The learning rate follows
a cosine schedule. Both schedules run on the run's `Pace` (`training.budget`): by
steps, or by time when `--max-minutes` ends the run first. Each epoch is seeded from
(seed, epoch), so its shuffle, shifts and reparameterisation noise are the same
whether or not the run was resumed in between. Under torchrun each rank trains on its
shard of every epoch and draws its own noise (see `training.distributed`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from training import checkpoint
from training.augment import shift_augment
from training.budget import Budget, Pace
from training.checkpoint import Progress, RunIdentity
from training.config import TrainConfig
from training.dataset import ImageSet
from training.distributed import ALONE, Log, World
from training.errors import CheckpointError, ConfigError
from training.metrics import ELBO_SAMPLES, bits_per_dim, format_seconds, negative_elbo
from training.model import VAE, LossWeights, ModelConfig, build_model
from training.progress import ProgressMeter
from training.selection import SELECTION_PIXELS
from training.spatial import SpatialVAE

MIN_LR_FACTOR = 0.01  # the cosine schedule ends at 1% of --lr, not at zero

if TYPE_CHECKING:
    from training.model import AnyVAE


# a spatial model's anomaly map after training against one validation row (an encode and
# a decode with its likelihood): its VAE, the defects the choice draws, the smoothing and
# the mixing; the map head and the densities, which grow faster with the image, are timed
# on real images instead (`_head_seconds`, `training.pipeline.map_image_seconds`)
MAP_ROWS = 4.0
HEAD_TIMED_IMAGES = 4
# the choice of a spatial model's map (four smoothings, 35 mixes of each, and the pixels
# of the tied ones) against the raw maps of the images it chooses on: 3.2 on 240 loose
# 304 px coins profiled alone, about 2 inside the preset's run there
CHOICE_COST = 2.5


@dataclass
class TrainResult:
    model: AnyVAE  # the best weights (lowest validation negative ELBO), eval mode
    best_epoch: int
    best_val_nelbo: float
    epochs: int  # epochs completed in all, counting those before a --resume
    images_per_second: float  # by all ranks together, over every epoch (resumed ones too)
    images_trained: int  # by this process in this run; under torchrun, its shards only
    row_seconds: float  # one decoder row of validation, as last measured on this rank
    map_image_seconds: float = 0.0  # per image, the maps beside the decoder's rows

    def metrics(self) -> dict[str, float]:
        return {
            "best_epoch": float(self.best_epoch),
            "epochs_trained": float(self.epochs),
            "best_val_nelbo_1_sample": self.best_val_nelbo,
            "train_images_per_second": self.images_per_second,
        }


@dataclass(frozen=True)
class EpochStats:
    """Means over one epoch's images (this rank's shard) and their count."""

    loss: float
    recon: float
    kl: float
    images: int
    map: float = 0.0  # the spatial model's anomaly map head loss (`training.spatial`)


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device name") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested, but CUDA is not available")
    return device


def cosine_lr(fraction: float, base: float) -> float:
    """The learning rate `fraction` of the way through the run: cosine from base."""
    progress = min(1.0, max(0.0, fraction))
    return base * (MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def loss_terms(
    model: nn.Module, x: Tensor, weights: LossWeights, warmup: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, mean reconstruction nll, mean KL, mean map-head loss) for one batch of a VAE
    (or DDP around one); `warmup` is the KL warm-up factor in [0, 1]. A spatial model
    also returns its anomaly map head's loss (`training.spatial`); other models' is 0."""
    recon, kl, _, *rest = model(x)  # (N,), (N, D)[, (N,)]
    kl_per_dim = kl.mean(0)  # (D,)
    # Free bits (Kingma et al. 2016): a dimension below the floor gets no KL gradient,
    # so the encoder can start using it before the prior pulls it back to N(0, 1).
    kl_term = kl_per_dim.clamp(min=weights.free_bits).sum()
    map_term = rest[0].mean() if rest else recon.new_zeros(())
    loss = recon.mean() + weights.beta * warmup * kl_term + map_term
    return loss, recon.mean(), kl_per_dim.sum(), map_term


def train(
    config: TrainConfig,
    model_config: ModelConfig,
    train_set: ImageSet,
    val_set: ImageSet,
    data_fingerprint: str,
    log: Log = print,
    world: World = ALONE,
    budget: Budget | None = None,
    map_image_seconds: float = 0.0,
) -> TrainResult:
    """Train, checkpointing every epoch; return the model with the best validation weights.

    Under torchrun every rank calls this; rank 0 alone writes the checkpoints. With a
    `budget` (default: `--max-minutes` from now), training leaves the evaluation its share,
    and the work after it (`map_image_seconds`: per image, the maps a spatial model's
    densities add, which the decoder's pace does not show).
    """
    budget = budget or Budget(config.max_minutes)
    world.require_shareable(config.batch_size, len(val_set))
    run = RunIdentity(config, model_config, data_fingerprint)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # the initial weights
    model = build_model(model_config)
    if isinstance(model, VAE):  # the `-ic` reference density, on this split only
        model.complexity.fit(train_set.images)
    model = model.to(world.rank_device(resolve_device(config.device)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    progress = Progress()
    if config.resume:  # every rank loads the same checkpoint
        progress = checkpoint.resume(Path(config.resume), run, model, optimizer)
        log(f"resumed from {config.resume} after epoch {progress.epoch}")
    replica = world.wrap(model)  # takes the steps; `model` is what is validated and saved
    images = train_set.images.to(next(model.parameters()).device)
    val_images = world.stride(val_set.images)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    weights = LossWeights(
        beta=config.beta,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        free_bits=config.free_bits,
    )
    pace = Pace(
        config.epochs * steps_per_epoch,
        weights.warmup_steps,
        budget,
        start_fraction=progress.pace,
        first_step=progress.step,
        world=world,
    )
    trained, row_seconds, epoch_seconds = 0, math.nan, 0.0
    head_seconds: float | None = None  # per image, a spatial model's map head, timed once
    pixels = math.prod(val_set.images.shape[2:])
    dims = math.prod(train_set.images.shape[1:])
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        started, warmup = time.monotonic(), pace.kl_weight(progress.step)
        stats = _train_epoch(
            replica, optimizer, images, config, weights, progress, pace, epoch, world, log
        )
        seconds = time.monotonic() - started
        trained += stats.images
        progress.images += world.size * stats.images
        progress.train_seconds += seconds
        validating = time.monotonic()
        nelbo = negative_elbo(model.eval(), val_images, seed=config.seed)
        row_seconds = (time.monotonic() - validating) / len(val_images)
        val = world.mean(nelbo)  # the same on every rank, so all agree on the best epoch
        progress.pace = pace.fraction(progress.step)
        improved = progress.record(epoch, val, model)
        if world.is_main:
            checkpoint.save_last(run, model, optimizer, progress)
            if improved:
                checkpoint.save_best(run, progress)
        if head_seconds is None:
            head_seconds = _head_seconds(model, val_images)
        epoch_seconds = time.monotonic() - started
        pace.set_eval_estimate(
            evaluation_seconds(config, len(val_images), row_seconds),
            after_evaluation_seconds(
                config, len(val_images), row_seconds, map_image_seconds + head_seconds, pixels
            ),
        )
        eta = min((config.epochs - epoch) * epoch_seconds, pace.seconds_left())
        validation = f"val nelbo {val:.2f}"
        if model_config.likelihood == "gaussian":
            validation += f" ({bits_per_dim(val, dims):.3f} bits/dim)"
        log(
            f"epoch {epoch}/{config.epochs}  "
            f"{describe_loss(stats, config, warmup)}  "
            f"{validation}{' (best)' if improved else ''}  "
            f"{world.size * stats.images / max(seconds, 1e-9):.0f} img/s  "
            f"training eta {format_seconds(eta)}"
        )
        if pace.sync(progress.step):
            log(
                f"--max-minutes {config.max_minutes}: training stops after epoch {epoch}, "
                "leaving the evaluation and export their time"
            )
            break
    if progress.best_weights is None:
        raise CheckpointError("no epoch was trained and the checkpoint holds no best weights")
    model.load_state_dict(progress.best_weights)
    return TrainResult(
        model.eval(),
        progress.best_epoch,
        progress.best_val,
        progress.epoch,
        progress.images / max(progress.train_seconds, 1e-9),
        trained,
        row_seconds,
        map_image_seconds + (head_seconds or 0.0),
    )


def describe_loss(stats: EpochStats, config: TrainConfig, warmup: float) -> str:
    """The epoch's loss as the sum it is, and why the KL's weight is not simply beta
    while the warm-up (`warmup`: its factor when the epoch began) is on: the loss is
    recon + beta * warm-up * KL (floored by free bits) [+ the anomaly map head's loss]."""
    term = stats.loss - stats.recon - stats.map  # the KL as the loss counted it
    line = f"loss {stats.loss:.2f} = recon {stats.recon:.2f} + "
    if config.free_bits > 0:
        line += f"kl term {term:.2f} (kl {stats.kl:.2f}, free bits {config.free_bits:g}/dim)"
    else:
        weight = term / stats.kl if stats.kl > 0 else config.beta * warmup
        line += f"{weight:.2f} x kl {stats.kl:.2f}"
    if stats.map:
        line += f" + map {stats.map:.2f}"
    if warmup < 1.0:
        line += f" (KL warm-up: the weight rises to beta={config.beta:g})"
    return line


def evaluation_seconds(config: TrainConfig, images: int, row_seconds: float) -> float:
    """What the evaluation of `images` (this rank's share) should take at `row_seconds`
    per decoder row: the metrics' draws, and the calibration's scores on rank 0 (a spatial
    model's score draws nothing: its calibration is mapped after the evaluation)."""
    scores = 0 if config.architecture == "spatial" else 2 * config.score_samples
    rows = images * (ELBO_SAMPLES + config.iwae_samples + scores)
    return rows * row_seconds


@torch.inference_mode()
def seconds_per_image(run: Callable[[Tensor], object], images: Tensor) -> float:
    """Seconds `run` takes per image of `images` (0 for none): what the budget holds back
    for work that the decoder's pace does not show."""
    if len(images) == 0:
        return 0.0
    started = time.monotonic()
    run(images)
    return (time.monotonic() - started) / len(images)


def _head_seconds(model: nn.Module, images: Tensor) -> float:
    """Seconds per image of a spatial model's map head, 0 for other models: on large
    images the U-Net over the image and its reconstruction costs many decoder rows, and
    every validation and calibration image is mapped again after training."""
    if not isinstance(model, SpatialVAE):
        return 0.0
    model.eval()
    return seconds_per_image(model.head_map, images[:HEAD_TIMED_IMAGES])


def after_evaluation_seconds(
    config: TrainConfig,
    val_images: int,
    row_seconds: float,
    map_image_seconds: float = 0.0,
    pixels: int = 0,
) -> float:
    """What the work between the evaluation and the artifact should take: its decoder
    rows at `row_seconds`, and for a spatial model its maps at `map_image_seconds` an
    image of `pixels` (0: unknown, every validation image is chosen on): the choice of
    the map, CHOICE_COST times the maps of the images it chooses on, clean and with a
    defect, and the calibration images, scored and scored again by the artifact's check."""
    seconds = after_evaluation_rows(config, val_images) * row_seconds
    if config.architecture == "spatial":
        chosen_on = val_images if pixels <= 0 else min(val_images, SELECTION_PIXELS // pixels)
        calibration = val_images * config.calibration_fraction / config.val_fraction
        seconds += (CHOICE_COST * 2 * chosen_on + 2 * calibration) * map_image_seconds
    return seconds


def _mapped_images(config: TrainConfig, val_images: int) -> float:
    """Images mapped after the evaluation: the validation images, clean and with a defect,
    and the calibration images, scored and scored again by the artifact's check."""
    calibration = val_images * config.calibration_fraction / config.val_fraction
    return 2 * val_images + 2 * calibration


def after_evaluation_rows(config: TrainConfig, val_images: int) -> float:
    """Decoder rows of the work between the evaluation and the artifact, which the
    evaluation may not use: a spatial model's maps of every validation image, clean and
    with a defect, to put its map together, and of the calibration images, scored and
    scored again by the exported artifact's check; a VAE's
    sampling prior, fitted to the training latents and its samples scored."""
    if config.architecture == "spatial":
        return MAP_ROWS * _mapped_images(config, val_images)
    if config.prior_components == 0:
        return 0.0
    train = val_images * (1 - config.val_fraction - config.calibration_fraction)
    train /= config.val_fraction
    return train / 2 + 2 * val_images * (1 + 2 * config.score_samples)


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    config: TrainConfig,
    weights: LossWeights,
    progress: Progress,
    pace: Pace,
    epoch: int,
    world: World,
    log: Log,
) -> EpochStats:
    """One pass over the shuffled training images (under torchrun, over this rank's shard),
    cut short when the pace says the time is up."""
    model.train()
    torch.manual_seed(config.seed * 1_000_003 + epoch)
    sums, count = torch.zeros(4, device=images.device), 0
    order = world.shard(torch.randperm(len(images), device=images.device))
    batches = order.split(world.local_batch(config.batch_size))
    world.seed_rank(config.seed * 1_000_003 + epoch)  # one shuffle for all, noise per rank
    meter = ProgressMeter(len(order), f"epoch {epoch}", log, enabled=world.is_main)
    for index in batches:
        x = shift_augment(images[index], config.augment_shift)  # (B, C, H, W)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(pace.fraction(progress.step), config.lr)
        loss, recon, kl, map_term = loss_terms(model, x, weights, pace.kl_weight(progress.step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.step += 1
        sums += torch.stack([loss, recon, kl, map_term]).detach() * len(x)
        count += len(x)
        meter.update(len(x))
        if meter.terminal and progress.step % 20 == 0:  # .tolist() waits for the GPU
            mean = (sums / count).tolist()
            meter.show(loss=f"{mean[0]:.1f}", recon=f"{mean[1]:.1f}", kl=f"{mean[2]:.1f}")
        if pace.due(progress.step) and pace.sync(progress.step):
            break
    meter.close()
    loss_mean, recon_mean, kl_mean, map_mean = (sums / max(count, 1)).tolist()
    return EpochStats(loss_mean, recon_mean, kl_mean, count, map_mean)
