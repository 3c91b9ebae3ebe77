"""The command-line flags, in groups shared by `python -m training` and the anomaly protocol.

Each flag's destination is the `TrainConfig` field of the same name, and its default
is read from `TrainConfig`, the one place the recipe lives.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Collection, Sequence
from dataclasses import fields
from typing import NoReturn, get_args

from training.config import (
    DEFAULT_WORK_SIDE,
    IMAGE_SIZE_RANGE,
    WORK_SIZE_RANGE,
    TrainConfig,
    complement,
)
from training.model import Architecture, Likelihood, ScoreKind
from training.presets import PRESETS, preset_values

DEFAULTS = TrainConfig()


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults, except the unset ones whose help text explains them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def int_list(text: str) -> tuple[int, ...]:
    """'32,64' -> (32, 64)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas: {text!r}"
        ) from None


def rate_of_quantile(text: str) -> float:
    """'0.99' -> 0.01: a quantile level as the false-alarm rate it leaves."""
    try:
        return complement(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1): {text!r}") from None


def add_data_flags(parser: argparse.ArgumentParser, classes: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        default=DEFAULTS.data,
        help="'mnist' (built in), a folder of PNG/JPEG images, or a .npz file "
        "with 'images' (and optional 'labels')",
    )
    if classes:
        group.add_argument(
            "--classes", type=int_list, help="keep only these labels, e.g. 3 or 0,1 (default: all)"
        )
    low, high = IMAGE_SIZE_RANGE
    work_low, work_high = WORK_SIZE_RANGE
    group.add_argument(
        "--image-size",
        type=int,
        default=DEFAULTS.image_size,
        help=f"resize every image to this side, {low}..{high} px; for --architecture "
        f"spatial the long side of the resolution it works at, {work_low}..{work_high} "
        f"px, or 0 for the data's own (at most {DEFAULT_WORK_SIDE})",
    )
    group.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="1 (grayscale) or 3 (RGB) (default: the data's own)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULTS.val_fraction,
        help="share of the images held out for validation (picks the best checkpoint)",
    )
    group.add_argument(
        "--calibration-fraction",
        type=float,
        default=DEFAULTS.calibration_fraction,
        help="share of the images held out to set the anomaly threshold, seen by nothing "
        "else; a false-alarm rate a needs at least (1 - a) / a of them, about 10 / a to "
        "pin it down",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="seeds the split, the weights, the batches and the score noise",
    )


def add_preset_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a named recipe; flags given explicitly override it. 'inspection': "
        "defect detection on photos at their own resolution (" + _preset_text("inspection") + ")",
    )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--architecture",
        choices=get_args(Architecture),
        default=DEFAULTS.architecture,
        help="encoder/decoder family",
    )
    group.add_argument(
        "--latent-dim",
        type=int,
        default=DEFAULTS.latent_dim,
        help="latent size D (spatial: latent channels per 8x8 cell)",
    )
    group.add_argument(
        "--hidden",
        type=int_list,
        default=_joined(DEFAULTS.hidden),
        help="conv channels per level, or MLP layer widths",
    )
    group.add_argument(
        "--dense", type=int, default=DEFAULTS.dense, help="width of the conv model's dense layer"
    )
    group.add_argument(
        "--likelihood",
        choices=get_args(Likelihood),
        default=DEFAULTS.likelihood,
        help="p(x|z): Bernoulli (BCE) or Gaussian with a learned variance",
    )
    group.add_argument(
        "--crop",
        type=int,
        default=DEFAULTS.crop,
        help="spatial: side of the random crops it trains on",
    )
    group.add_argument(
        "--crops-per-image",
        type=int,
        default=DEFAULTS.crops_per_image,
        help="spatial: crops taken from each image of a batch",
    )
    group.add_argument(
        "--map-hidden",
        type=int_list,
        default=_joined(DEFAULTS.map_hidden),
        help="spatial: widths of the anomaly map head's U-Net levels",
    )
    group.add_argument(
        "--map-sigma",
        type=float,
        help="spatial: Gaussian smoothing of the anomaly map, px (default: chosen on the "
        "validation images with synthetic defects)",
    )
    group.add_argument(
        "--min-sigma",
        type=float,
        default=DEFAULTS.min_sigma,
        help="floor of the Gaussian likelihood's learned sigma (pixels in [0, 1]); at or "
        "above 0.135, where sigma starts, it is a fixed sigma",
    )
    group.add_argument(
        "--prior-components",
        type=int,
        default=DEFAULTS.prior_components,
        help="components of the Gaussian mixture fitted to the training images' latents "
        "after training, which /sample draws from (0: N(0, I))",
    )


def add_loss_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loss")
    group.add_argument(
        "--beta", type=float, default=DEFAULTS.beta, help="weight of the KL term (beta-VAE)"
    )
    group.add_argument(
        "--warmup-epochs",
        type=float,
        default=DEFAULTS.warmup_epochs,
        help="epochs of linear KL warm-up from 0 to beta",
    )
    group.add_argument(
        "--free-bits",
        type=float,
        default=DEFAULTS.free_bits,
        help="KL floor per latent dimension, nats (batch average)",
    )


def add_optim_flags(parser: argparse.ArgumentParser, resume: bool = True) -> None:
    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="training epochs")
    group.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        help="images per optimizer step; under torchrun the global batch, split evenly "
        "over the processes, so a recipe means the same at any scale",
    )
    group.add_argument(
        "--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate, then a cosine decay"
    )
    group.add_argument(
        "--augment-shift",
        type=int,
        default=DEFAULTS.augment_shift,
        help="random shift of up to this many pixels per image (0: off)",
    )
    group.add_argument(
        "--max-minutes",
        type=float,
        help="finish the whole command (training, evaluation, export) within this many "
        "minutes: training stops early enough, the schedules follow the clock, and the "
        "evaluation takes fewer draws when it must (default: no limit)",
    )
    group.add_argument(
        "--device",
        default=DEFAULTS.device,
        help="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ...",
    )
    group.add_argument(
        "--dist-timeout-minutes",
        type=float,
        default=DEFAULTS.dist_timeout_minutes,
        help="under torchrun: how long a rank waits for the others at a collective before "
        "the job fails (rank 0's export alone never counts: the others have left)",
    )
    group.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: one per core); on a busy machine 1 can be "
        "several times faster, as idle-spinning threads then wait on each other",
    )
    if resume:
        group.add_argument(
            "--resume", help="continue from a last.pt checkpoint (same model and data flags)"
        )


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("outputs")
    group.add_argument(
        "--name", help="the model's name (default: 'mnist', or the data path's stem)"
    )
    group.add_argument(
        "--checkpoint-dir", help="checkpoints and metrics.json (default: runs/<name>)"
    )
    group.add_argument("--out", help="the artifact folder (default: models/<name>)")


def add_score_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("anomaly score and evaluation")
    group.add_argument(
        "--score",
        choices=get_args(ScoreKind),
        default=DEFAULTS.score,
        help="the artifact's anomaly score: negative ELBO, IWAE -log p(x), or reconstruction nll",
    )
    group.add_argument(
        "--score-samples",
        type=int,
        default=DEFAULTS.score_samples,
        help="latent draws frozen into the score",
    )
    rate = group.add_mutually_exclusive_group()
    rate.add_argument(
        "--false-alarm-rate",
        type=float,
        default=DEFAULTS.false_alarm_rate,
        help="share of new normal images the threshold may flag: a split-conformal "
        "threshold on the calibration split",
    )
    rate.add_argument(
        "--threshold-quantile",
        type=rate_of_quantile,
        dest="false_alarm_rate",
        metavar="Q",
        help="the same as --false-alarm-rate 1-Q (the threshold's level among normal scores)",
    )
    group.add_argument(
        "--iwae-samples",
        type=int,
        default=DEFAULTS.iwae_samples,
        help="k of the IWAE estimate of -log p(x) in the metrics",
    )


def config_from_args(
    args: argparse.Namespace, explicit: Collection[str] | None = None
) -> TrainConfig:
    """The parsed flags over the preset's values over `TrainConfig`'s defaults, validated.
    `explicit`: the flags (destinations) the user gave; they win over the preset. None:
    every flag counts as given."""
    names = [f.name for f in fields(TrainConfig) if hasattr(args, f.name)]
    given = set(names) if explicit is None else set(explicit)
    values = preset_values(getattr(args, "preset", None))
    values |= {name: getattr(args, name) for name in names if name in given or name not in values}
    return TrainConfig(**values).validate()


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags present on the command line `argv`."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:  # absent flags then leave no attribute at all
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def _preset_text(name: str) -> str:
    return ", ".join(f"{key}={_shown(value)}" for key, value in preset_values(name).items())


def _shown(value: object) -> str:
    return _joined(value) if isinstance(value, tuple) else str(value)


def _joined(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)
