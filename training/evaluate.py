"""`python -m training.evaluate`: measure models.

    anomaly    the one-class protocol: per digit, train on it alone, then the AUROC of
               every other digit against its held-out images (see `training.anomaly`)
    textures   the texture benchmark: defects on real surfaces with pixel masks, the
               inspection preset against baselines (see `training.textures`)
    parts      the parts benchmark: the same on aligned views of an object, as a camera
               over a fixture sees them (see `training.parts`)
    artifact   negative ELBO, IWAE -log p(x) and the flagged share of an exported
               artifact, computed by the artifact's own methods, on any data source
    samples    sample quality of an artifact (`training.samples`): from N(0, I), from
               its own sampling prior, and from a mixture fitted now to its latents
    served     a running service on labelled images in the MVTec AD layout: every test
               image uploaded to /anomaly, the figures from its answers (`training.served`)
    write-set  a built-in texture or part set written as files in that layout, to train
               on with `python -m training --data DIR/train/good` and measure with `served`

The per-training metrics (validation negative ELBO and IWAE) are computed by
`training.metrics` during `python -m training` and land in `model.json`.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import torch
from PIL import Image
from torch import Tensor

from app.artifact import ArtifactError, ModelMetadata, load_artifact
from training import flags
from training.anomaly import run_anomaly
from training.calibrate import score_images
from training.cli import run_cli
from training.data import load_images
from training.dataset import ImageSet, select_classes, split
from training.errors import ConfigError, TrainingError
from training.folders import write_set
from training.metrics import chunk_rows
from training.model import ScoreKind
from training.parts import MAX_SHIFT, MAX_TURN, PARTS, SHIFT, TURN, build_part_set
from training.pipeline import write_json
from training.prior import encoder_means, fit_mixture, mixture_prior
from training.samples import PriorFn, draw_samples, features, frechet_distance, sample_quality
from training.served import measure_served
from training.texture_report import TextureRun, markdown, run_textures, write_report
from training.textures import TEXTURES, TextureSet, build_texture_set
from vae_client.client import DEFAULT_URL, VAEClient

T = TypeVar("T", int, float)

SAMPLES_EXAMPLE = """example:
  python -m training.evaluate samples models/mnist --grid docs/samples
"""

SERVED_EXAMPLE = """example (the whole round trip, on a built-in set):
  python -m training.evaluate write-set /tmp/coins --source coins --size 300 --turn 180
  python -m training --data /tmp/coins/train/good --preset inspection --out models/coins
  VAE_MODEL_DIR=models/coins make run
  python -m training.evaluate served /tmp/coins --url http://127.0.0.1:8000
"""

ANOMALY_EXAMPLE = """example:
  python -m training.evaluate anomaly --epochs 30 --scores iwae,nelbo,recon
"""


def digit_list(text: str) -> tuple[int, ...]:
    """'0-9' -> (0, ..., 9); '3' -> (3,); '0,2,5' -> (0, 2, 5)."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-", 1))
            return tuple(range(first, last + 1))
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 0-9, 3 or 0,2,5: {text!r}") from None


def score_kinds(text: str) -> tuple[ScoreKind, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [k for k in kinds if k not in get_args(ScoreKind)]
    if unknown or not kinds:
        known = ", ".join(get_args(ScoreKind))
        raise argparse.ArgumentTypeError(f"score kinds are {known}; got {text!r}")
    return kinds  # type: ignore[return-value]  # checked against ScoreKind just above


def build_parser() -> flags.Parser:
    parser = flags.Parser(
        prog="python -m training.evaluate",
        description="Measure models: the one-class anomaly protocol, or an exported artifact.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    anomaly = commands.add_parser(
        "anomaly",
        help="the one-class AUROC protocol",
        description="For each digit: train on it alone, score its held-out images and\n"
        "every image of the other digits, report the AUROC of the others against it.",
        epilog=ANOMALY_EXAMPLE,
        formatter_class=flags.HelpFormatter,
    )
    anomaly.add_argument("--digits", type=digit_list, default="0-9", help="e.g. 0-9, 3 or 0,1")
    anomaly.add_argument(
        "--scores",
        type=score_kinds,
        help="kinds to compare, e.g. nelbo,iwae,recon (default: --score)",
    )
    anomaly.add_argument(
        "--work-dir", default="runs/anomaly", help="per-digit runs, artifacts and reports"
    )
    anomaly.add_argument("--json", help="the report's path (default: <work-dir>/anomaly.json)")
    anomaly.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of each digit held out as its normal test images: the AUROC's normal "
        "side and the measured false-alarm rate; nothing else sees them",
    )
    flags.add_data_flags(anomaly, classes=False)
    flags.add_model_flags(anomaly)
    flags.add_loss_flags(anomaly)
    flags.add_optim_flags(anomaly, resume=False)
    flags.add_score_flags(anomaly)
    textures = commands.add_parser(
        "textures",
        help="the texture benchmark: defects on real surfaces, against baselines",
        description="Per texture photograph: train the inspection preset and the baselines "
        "on crops of\nits top, score held-out crops with and without synthetic defects.",
        formatter_class=flags.HelpFormatter,
    )
    textures.add_argument(
        "--textures",
        type=name_list(TEXTURES, "textures"),
        default=",".join(TEXTURES),
        help="scikit-image photographs to use",
    )
    _add_benchmark_flags(textures, "runs/textures")
    parts = commands.add_parser(
        "parts",
        help="the parts benchmark: defects on aligned views of an object, against baselines",
        description="Per photograph: train the inspection preset and the baselines on views "
        "of it\nshifted, turned and relit a little, as a part in a fixture is; score new "
        "views\nwith and without synthetic defects.",
        formatter_class=flags.HelpFormatter,
    )
    parts.add_argument(
        "--parts",
        type=name_list(PARTS, "parts"),
        default=",".join(PARTS),
        help="scikit-image photographs to use",
    )
    parts.add_argument(
        "--shift",
        type=bounded(int, 0, MAX_SHIFT),
        default=SHIFT,
        help=f"px each way a view may be shifted by (0 to {MAX_SHIFT})",
    )
    parts.add_argument(
        "--turn",
        type=bounded(float, 0.0, MAX_TURN),
        default=TURN,
        help="degrees a view may be turned by, either way (0 to 180: a part that lies any "
        "way round)",
    )
    _add_benchmark_flags(parts, "runs/parts")
    artifact = commands.add_parser(
        "artifact",
        help="likelihood metrics of an exported artifact",
        formatter_class=flags.HelpFormatter,
    )
    artifact.add_argument("directory", help="the artifact folder, e.g. models/mnist")
    artifact.add_argument("--data", default="mnist", help="'mnist', a folder or a .npz file")
    artifact.add_argument(
        "--classes", type=flags.int_list, help="keep only these labels (default: all)"
    )
    artifact.add_argument(
        "--split",
        choices=("val", "all"),
        default="val",
        help="the validation split (as in training) or every image",
    )
    artifact.add_argument(
        "--val-fraction", type=float, default=flags.DEFAULTS.val_fraction, help="as in training"
    )
    artifact.add_argument(
        "--seed", type=int, default=flags.DEFAULTS.seed, help="as in training; also seeds the noise"
    )
    artifact.add_argument(
        "--elbo-samples", type=int, default=16, help="draws averaged in the negative ELBO"
    )
    artifact.add_argument(
        "--iwae-samples",
        type=int,
        default=flags.DEFAULTS.iwae_samples,
        help="k of the IWAE estimate",
    )
    artifact.add_argument("--json", help="also write the metrics here")
    samples = commands.add_parser(
        "samples",
        help="sample quality of an exported artifact",
        description="The share of samples the artifact's own score calls normal, and their\n"
        "Frechet distance to the held-out images (pooled pixels), for N(0, I), the\n"
        "artifact's sampling prior, and a mixture fitted now (--fit-mixture).",
        epilog=SAMPLES_EXAMPLE,
        formatter_class=flags.HelpFormatter,
    )
    samples.add_argument("directory", help="the artifact folder, e.g. models/mnist")
    samples.add_argument("--data", default="mnist", help="its training data, as in training")
    samples.add_argument("--classes", type=flags.int_list, help="as in training (default: all)")
    samples.add_argument(
        "--val-fraction", type=float, default=flags.DEFAULTS.val_fraction, help="as in training"
    )
    samples.add_argument(
        "--seed", type=int, default=flags.DEFAULTS.seed, help="as in training; seeds the samples"
    )
    samples.add_argument(
        "--fit-mixture",
        type=int,
        default=flags.DEFAULTS.prior_components,
        help="components of a mixture fitted now to the artifact's latents of the training "
        "split, what training does for new artifacts (0: skip)",
    )
    samples.add_argument("--grid", help="write a PNG of 64 samples per prior here (a folder)")
    samples.add_argument("--json", help="also write the figures here")
    _add_served_parser(commands)
    _add_write_set_parser(commands)
    return parser


def _add_served_parser(commands: Any) -> None:
    served = commands.add_parser(
        "served",
        help="measure a running service on labelled images (MVTec AD layout)",
        description="Upload every image under DIR/test (good/ and a folder per defect kind,\n"
        "masks in DIR/ground_truth/<kind>/<name>_mask.png) to /anomaly with its heat map;\n"
        "report image AUROC per kind, pixel AUROC, recall and false alarms from the answers.",
        epilog=SERVED_EXAMPLE,
        formatter_class=flags.HelpFormatter,
    )
    served.add_argument("directory", help="the set's folder (holds test/ and ground_truth/)")
    served.add_argument("--url", default=DEFAULT_URL, help="the service's base URL")
    served.add_argument("--api-key", help="the service's API key, when it wants one")
    served.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each answer"
    )
    served.add_argument(
        "--concurrency",
        type=bounded(int, 1, 64),
        default=4,
        help="requests in flight at once, so that the service batches them",
    )
    served.add_argument(
        "--overlays", help="write the service's overlay of each image here, a folder per kind"
    )
    served.add_argument("--json", help="also write the figures here, with each image's score")


def _add_write_set_parser(commands: Any) -> None:
    write = commands.add_parser(
        "write-set",
        help="write a built-in texture or part set as image files (MVTec AD layout)",
        description="Normal training images in DIR/train/good, normal and defective test "
        "images\nin DIR/test/<kind>, masks in DIR/ground_truth: the layout `served` reads.",
        epilog=SERVED_EXAMPLE,
        formatter_class=flags.HelpFormatter,
    )
    write.add_argument("directory", help="a new folder for the set")
    write.add_argument(
        "--source",
        choices=(*PARTS, *TEXTURES),
        default="coins",
        help="a part (views of a photograph) or a texture (crops of it)",
    )
    write.add_argument("--size", type=bounded(int, 32, 1024), default=300, help="px per side")
    write.add_argument(
        "--train", type=bounded(int, 1, 100_000), default=1200, help="normal images to train on"
    )
    write.add_argument(
        "--normal", type=bounded(int, 1, 100_000), default=120, help="normal test images"
    )
    write.add_argument(
        "--per-kind", type=bounded(int, 1, 10_000), default=40, help="test images per defect kind"
    )
    write.add_argument(
        "--shift",
        type=bounded(int, 0, MAX_SHIFT),
        default=SHIFT,
        help="a part's placement: px each way (parts only)",
    )
    write.add_argument(
        "--turn",
        type=bounded(float, 0.0, MAX_TURN),
        default=TURN,
        help="a part's placement: degrees either way (parts only)",
    )
    write.add_argument("--seed", type=int, default=0, help="seeds the views and the defects")


def _add_benchmark_flags(parser: argparse.ArgumentParser, work_dir: str) -> None:
    """The flags the texture and the parts benchmarks share."""
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=60.0,
        help="a safety cap on each model's run: the runs are bounded by epochs, so that the "
        "figures do not depend on how busy the machine is",
    )
    parser.add_argument(
        "--epochs", type=int, default=20, help="the inspection model's epochs (at most)"
    )
    parser.add_argument("--whole-epochs", type=int, default=20, help="the whole-image VAE's epochs")
    parser.add_argument("--work-dir", default=work_dir, help="runs and artifacts")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="use again what an earlier run left in --work-dir: the whole-image VAE's "
        "artifacts are scored as they are, the inspection runs resume from their last "
        "checkpoints (what happens after training, the map, the calibration and the "
        "export, is redone on the same weights)",
    )
    parser.add_argument(
        "--report-dir",
        default="docs",
        help=f"where {parser.prog.split()[-1]}.md, .json and .png are written, after each set",
    )


def name_list(known: tuple[str, ...], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated choice of `known` names."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        if not names or any(name not in known for name in names):
            raise argparse.ArgumentTypeError(f"{what} are {', '.join(known)}; got {text!r}")
        return names

    return parse


def bounded(kind: Callable[[str], T], low: T, high: T) -> Callable[[str], T]:
    """An argparse type: a number of `kind` from `low` to `high`."""

    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high}: {text!r}")
        return value

    return parse


def textures_command(args: argparse.Namespace) -> None:
    _benchmark(args, args.textures, "textures", build_texture_set, "held-out region", "texture")


def parts_command(args: argparse.Namespace) -> None:
    build = functools.partial(build_part_set, shift=args.shift, turn=args.turn)
    placement = {"shift_px": args.shift, "turn_degrees": args.turn}
    _benchmark(args, args.parts, "parts", build, "test views", "part", placement)


def _benchmark(
    args: argparse.Namespace,
    names: tuple[str, ...],
    stem: str,
    build: Callable[[str], TextureSet],
    held_out: str,
    what: str,
    extra: dict[str, object] | None = None,
) -> None:
    inspection = {"epochs": args.epochs, "max_minutes": args.max_minutes}
    whole = {"epochs": args.whole_epochs, "max_minutes": args.max_minutes}
    settings = {"inspection": inspection, "whole_image": whole, stem: list(names), **(extra or {})}

    def report(runs: list[TextureRun]) -> Path:
        return write_report(runs, Path(args.report_dir), settings, stem, held_out, what)

    runs = run_textures(
        names, Path(args.work_dir), inspection, whole, reuse=args.reuse, build=build, done=report
    )
    print(markdown(runs, held_out, what))
    print(f"report: {args.report_dir}/{stem}.md, {stem}.json, {stem}.png")


def served_command(args: argparse.Namespace) -> None:
    root = Path(args.directory)
    if not root.is_dir():
        raise TrainingError(f"{root}: no such folder")
    with VAEClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        overlays = None if args.overlays is None else Path(args.overlays)
        report = measure_served(root, client, args.url, args.concurrency, overlays)
    print(report.markdown())
    if args.json:
        print(f"report: {write_json(Path(args.json), report.to_dict())}")


def write_set_command(args: argparse.Namespace) -> None:
    if args.source in PARTS:
        build: Callable[..., TextureSet] = functools.partial(
            build_part_set, shift=args.shift, turn=args.turn
        )
    else:
        build = build_texture_set
    # One fresh view only: they are not written, `served` measures false alarms on test/good.
    sizes = {"train": args.train, "normal": args.normal, "per_kind": args.per_kind, "fresh": 1}
    data = build(args.source, size=args.size, seed=args.seed, **sizes)
    counts = write_set(Path(args.directory), data)
    for where, count in counts.items():
        print(f"{args.directory}/{where}: {count} images")


def anomaly_command(args: argparse.Namespace) -> None:
    config = flags.config_from_args(args)
    work_dir = Path(args.work_dir)
    images = load_images(config.data, config.image_size, config.channels)
    kinds = args.scores or (config.score,)
    if not 0.0 < args.test_fraction < 1.0 - config.val_fraction - config.calibration_fraction:
        raise ConfigError("--test-fraction must leave images to train on")
    report = run_anomaly(
        config, images, args.digits, kinds, work_dir, test_fraction=args.test_fraction
    )
    table = report.markdown()
    print(table)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "anomaly.md").write_text(table + "\n")
    payload = {
        **report.to_dict(),
        "shipped_score": config.score,
        "test_fraction": args.test_fraction,
        "training": config.to_dict(),
    }
    print(f"report: {write_json(Path(args.json or work_dir / 'anomaly.json'), payload)}")


def _artifact_and_data(
    args: argparse.Namespace,
) -> tuple[torch.jit.ScriptModule, ModelMetadata, ImageSet]:
    """The artifact `args.directory` and its data (`--data`, `--classes`) at its size."""
    try:
        module, metadata = load_artifact(Path(args.directory))
    except ArtifactError as exc:
        raise TrainingError(str(exc)) from None
    images = load_images(args.data, metadata.height, metadata.channels)
    if args.classes is not None:
        images = select_classes(images, args.classes)
    return module, metadata, images


@torch.inference_mode()
def artifact_command(args: argparse.Namespace) -> None:
    if min(args.elbo_samples, args.iwae_samples) < 1:
        raise ConfigError("--elbo-samples and --iwae-samples must be at least 1")
    module, metadata, images = _artifact_and_data(args)
    if args.split == "val":
        images = split(images, args.val_fraction, args.seed)[1]
    x = images.images
    torch.manual_seed(args.seed)
    rows = chunk_rows(metadata.image_shape)
    nelbo = torch.cat(
        [module.elbo(b, args.elbo_samples) for b in x.split(_chunk(rows, args.elbo_samples))]
    )
    iwae = torch.cat(
        [module.iwae(b, args.iwae_samples) for b in x.split(_chunk(rows, args.iwae_samples))]
    )
    scores = score_images(module.score, x)
    metrics = {
        "images": len(images),
        "nelbo": float(nelbo.mean()),
        "iwae_nll": float(iwae.mean()),
        "iwae_samples": args.iwae_samples,
        "score_mean": float(scores.mean()),
        "flagged_fraction": float((scores > metadata.calibration.threshold).double().mean()),
    }
    for key, value in metrics.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        write_json(Path(args.json), {"artifact": args.directory, "data": args.data, **metrics})


@torch.inference_mode()
def samples_command(args: argparse.Namespace) -> None:
    module, metadata, images = _artifact_and_data(args)
    train_set, val_set = split(images, args.val_fraction, args.seed)
    priors: dict[str, PriorFn | None] = {"standard normal": None}
    if hasattr(module, "prior_latents") and metadata.sampling_prior.components > 0:
        priors[f"the artifact's ({metadata.sampling_prior.components} components)"] = (
            module.prior_latents
        )
    if args.fit_mixture > 0:
        latents = encoder_means(module.encode, train_set.images)
        mixture = fit_mixture(latents, args.fit_mixture, args.seed)
        priors[f"mixture fitted now ({args.fit_mixture} components)"] = mixture_prior(*mixture)
    threshold, dim = metadata.calibration.threshold, metadata.latent_dim
    rows = {}
    for name, prior in priors.items():
        drawn = draw_samples(module.decode, prior, len(val_set), dim, args.seed)
        rows[name] = sample_quality(drawn, val_set.images, module.score, threshold)
        if args.grid:
            _write_grid(drawn[:64], Path(args.grid) / f"{metadata.name}-{_slug(name)}.png")
    data_fd = frechet_distance(features(train_set.images[: len(val_set)]), features(val_set.images))
    held_out = float((score_images(module.score, val_set.images) <= threshold).double().mean())
    print(f"| {metadata.name}: prior | samples scored normal | FD to held-out images |")
    print("|---|---:|---:|")
    for name, quality in rows.items():
        print(f"| {name} | {100 * quality.normal_share:.1f}% | {quality.fd:.3g} |")
    print(f"| (held-out images themselves) | {100 * held_out:.1f}% | {data_fd:.3g} |")
    if args.json:
        payload = {name: vars(quality) for name, quality in rows.items()}
        payload |= {"held_out_normal_share": held_out, "data_fd": data_fd}  # type: ignore[dict-item]
        write_json(Path(args.json), {"artifact": args.directory, "data": args.data, **payload})


def _write_grid(images: Tensor, path: Path) -> None:
    """Up to 64 images (N, C, H, W) in [0, 1] as one PNG, 8 per row."""
    n, channels, height, width = images.shape
    side = math.ceil(math.sqrt(n))
    canvas = torch.ones(channels, side * (height + 2), side * (width + 2))
    for index, image in enumerate(images):
        top, left = (index // side) * (height + 2) + 1, (index % side) * (width + 2) + 1
        canvas[:, top : top + height, left : left + width] = image
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    print(f"grid: {path}")


def _slug(name: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in name).split()).lower()


def _chunk(rows: int, samples: int) -> int:
    return max(1, math.ceil(rows / samples))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "anomaly": anomaly_command,
        "textures": textures_command,
        "parts": parts_command,
        "artifact": artifact_command,
        "samples": samples_command,
        "served": served_command,
        "write-set": write_set_command,
    }
    command = commands[args.command]
    return run_cli(lambda: command(args))


if __name__ == "__main__":
    sys.exit(main())
