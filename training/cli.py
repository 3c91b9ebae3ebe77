"""`python -m training`: flags -> `TrainConfig` -> `pipeline.run`.

Every error the user can act on, usage errors included, is one line on stderr and a
non-zero exit: 2 for usage, 1 for a `TrainingError`, 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from training import flags, pipeline
from training.errors import TrainingError

EXAMPLES = """examples:
  python -m training                                  # the shipped MNIST model
  python -m training --classes 3 --name mnist-3       # an anomaly model of "normal" threes
  python -m training --data photos/ --image-size 64 --channels 3 --likelihood gaussian
  python -m training --data parts/ --preset inspection  # a defect detector, full resolution
  python -m training --resume runs/mnist/last.pt      # continue an interrupted run
  torchrun --standalone --nproc-per-node 2 -m training  # data parallel: 2 processes (GPUs)
"""


def build_parser() -> flags.Parser:
    parser = flags.Parser(
        prog="python -m training",
        description="Train a VAE, evaluate it, calibrate its anomaly score, export the artifact.",
        epilog=EXAMPLES,
        formatter_class=flags.HelpFormatter,
    )
    flags.add_preset_flag(parser)
    flags.add_data_flags(parser)
    flags.add_model_flags(parser)
    flags.add_loss_flags(parser)
    flags.add_optim_flags(parser)
    flags.add_output_flags(parser)
    flags.add_score_flags(parser)
    return parser


def run_cli(command: Callable[[], Any]) -> int:
    """Run `command`; a `TrainingError` becomes one line on stderr and exit status 1."""
    try:
        command()
    except TrainingError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    """The command; `started` (time.monotonic()) is when the process began, for
    --max-minutes (default: now)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = flags.explicit_flags(parser, argv)
    return run_cli(lambda: _train(args, explicit, started))


def _train(args: argparse.Namespace, explicit: set[str], started: float | None) -> None:
    config = flags.config_from_args(args, explicit)
    fit = pipeline.run(config, started=started)
    if fit is None:  # a torchrun rank other than 0: rank 0 reports
        return
    print(f"artifact: {fit.artifact}")
    metrics = fit.metrics
    print(
        f"training: {metrics['epochs_trained']:.0f} epochs, best {metrics['best_epoch']:.0f}, "
        f"{metrics['train_images_per_second']:.0f} img/s"
    )
    bits = ""
    if "val_nelbo_bits_per_dim" in metrics:
        bits = f" ({metrics['val_nelbo_bits_per_dim']:.3f} bits/dim)"
    print(
        f"validation: negative ELBO {metrics['val_nelbo']:.2f} nats/image{bits}, "
        f"IWAE -log p(x) {metrics['val_iwae_nll']:.2f} (k={metrics['iwae_samples']:.0f})"
    )
    calibration = fit.calibration
    low, high = calibration.false_alarm_interval or (math.nan, math.nan)
    unit = "" if config.score == "map" else " nats"
    print(
        f"anomaly threshold ({config.score}, split conformal on {calibration.count} "
        f"calibration images): {calibration.threshold:.{4 if config.score == 'map' else 2}f}"
        f"{unit}; false-alarm rate {config.false_alarm_rate:g} requested, "
        f"{calibration.expected_false_alarm_rate:.4f} expected on new normal data, "
        f"90% within [{low:.4f}, {high:.4f}]"
    )
