"""Runs the texture benchmark (`training.textures`) and writes its tables and figure.

Per texture, in one run on one machine: the two pixel baselines, the whole-image VAE
the README's colour example trains, and the inspection preset, each through the real
training pipeline and its exported artifact, scored as the service would score them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from app.artifact import ModelMetadata, load_artifact
from app.preprocessing import preprocessing_for
from training.checkpoint import LAST
from training.config import TrainConfig
from training.dataset import ImageSet
from training.defects import KINDS
from training.pipeline import fit_and_export, prepare_data
from training.presets import preset_values
from training.textures import (
    Result,
    Scores,
    TextureSet,
    artifact_scores,
    brightness_baseline,
    build_texture_set,
    measure,
    model_input,
    pca_baseline,
    vae_map_scores,
)
from training.train import Log

WHOLE_IMAGE_SIZE = 64
# of the 1,000 training crops: 200 validate, 200 calibrate (a 1% rate needs 99 or more)
SPLITS = {"val_fraction": 0.2, "calibration_fraction": 0.2}
FIGURE_EXAMPLES = 4  # defective crops per texture in the figure

Reuse = Literal["no", "artifact", "resume"]


@dataclass(frozen=True)
class TextureRun:
    texture: str
    results: list[Result]
    seconds: float
    examples: np.ndarray  # (rows of input | mask | heat map), uint8 RGB, for the figure


def inspection_config(name: str, work_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The inspection preset as shipped, with `overrides` (e.g. a shorter time budget)."""
    values = preset_values("inspection") | SPLITS | overrides
    return TrainConfig(
        data=name,
        preset="inspection",
        name=f"{name}-inspection",
        checkpoint_dir=str(work_dir / name / "inspection-runs"),
        out=str(work_dir / name / "inspection"),
        **values,
    ).validate()


def whole_image_config(name: str, work_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """What the README's colour example trains: the default conv VAE at 64 px, Gaussian."""
    return TrainConfig(
        data=name,
        name=f"{name}-whole",
        image_size=WHOLE_IMAGE_SIZE,
        likelihood="gaussian",
        checkpoint_dir=str(work_dir / name / "whole-runs"),
        out=str(work_dir / name / "whole"),
        **(SPLITS | overrides),
    ).validate()


def run_texture(
    name: str,
    work_dir: Path,
    inspection: dict[str, Any],
    whole: dict[str, Any],
    log: Log = print,
    isolated_check: bool = True,
    reuse: bool = False,
    build: Callable[[str], TextureSet] = build_texture_set,
) -> TextureRun:
    started = time.monotonic()
    data = build(name)
    log(
        f"--- {name}: {len(data.train)} training images, {len(data.normal)} normal and "
        f"{len(data.defective)} defective test images ---"
    )
    results = [
        measure("brightness", brightness_baseline(data), data),
        measure("pca", pca_baseline(data), data),
    ]
    baseline_reuse: Reuse = "artifact" if reuse else "no"
    module, metadata = _fit(
        whole_image_config(name, work_dir, whole),
        data,
        log,
        isolated_check,
        baseline_reuse,
        resize=True,
    )
    results.append(measure("whole-image VAE", artifact_scores(module, metadata, data), data))
    module, metadata = _fit(
        inspection_config(name, work_dir, inspection),
        data,
        log,
        isolated_check,
        "resume" if reuse else "no",
    )
    for method, scores in vae_map_scores(module, metadata, data).items():
        results.append(measure(method, scores, data))
    ours = artifact_scores(module, metadata, data)
    results.append(measure("inspection", ours, data))
    for result in results:
        log(
            f"{name} {result.method}: image AUROC {100 * result.image_auroc:.1f}, "
            f"pixel AUROC {100 * result.pixel_auroc:.1f}"
        )
    return TextureRun(name, results, time.monotonic() - started, _examples(data, ours))


def _fit(
    config: TrainConfig,
    data: TextureSet,
    log: Log,
    isolated_check: bool,
    reuse: Reuse,
    resize: bool = False,
) -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """Train and export through the real pipeline; the loaded artifact. What an earlier
    run of the same command left in the work folder is used again with `reuse`:
    "artifact" scores its artifact as it is; "resume" resumes the run from its last
    checkpoint (the epochs it had not trained, then the map, the calibration and the
    export again, so that changes after training are measured on the same weights)."""
    last = config.checkpoint_path / LAST
    if reuse == "artifact" and (config.artifact_path / "model.json").is_file():
        log(f"reusing {config.artifact_path}")
        return load_artifact(config.artifact_path)
    if reuse == "resume" and last.is_file():
        log(f"resuming {last}")
        config = replace(config, resume=str(last))
    train = data.train
    if resize:  # the whole-image model sees its images at its own size, as served
        size = (config.image_size, config.image_size)
        train = model_input(train, preprocessing_for(train.shape[1]), size)
    prepared = prepare_data(config, ImageSet(train))
    fit = fit_and_export(config, prepared, log, isolated_check)
    return load_artifact(fit.artifact)


def _examples(data: TextureSet, scores: Scores) -> np.ndarray:
    """Rows of (input, mask, heat map) for the defective crops with the highest map peaks."""
    rows = []
    picks = [data.kinds.index(kind) for kind in KINDS[:FIGURE_EXAMPLES]]
    for index in picks:
        crop = data.defective[index].permute(1, 2, 0).numpy()
        crop = np.repeat(crop, 3, axis=2) if crop.shape[2] == 1 else crop
        mask = np.repeat(data.masks[index].numpy()[:, :, None], 3, axis=2).astype(np.float32)
        heat = scores.defective_maps[index].numpy()
        heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-6)
        heat_rgb = np.stack([heat, heat**2, 1 - heat], axis=2) * 0.6 + crop * 0.4
        rows.append(np.concatenate([crop, mask, heat_rgb], axis=1))
    return (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)


def markdown(
    runs: list[TextureRun], held_out: str = "held-out region", what: str = "texture"
) -> str:
    """The summary table (image and pixel AUROC per method), then per defect kind;
    `held_out` names the normal test images in the last column's head, `what` the sets."""
    methods = [r.method for r in runs[0].results]
    head = f"| {what} | " + " | ".join(f"{m} image / pixel" for m in methods) + " |"
    lines = [head, "|---|" + "---:|" * len(methods)]
    for run in runs:
        cells = [f"{100 * r.image_auroc:.1f} / {100 * r.pixel_auroc:.1f}" for r in run.results]
        lines.append(f"| {run.texture} | " + " | ".join(cells) + " |")
    means = [
        (
            np.mean([run.results[i].image_auroc for run in runs]),
            np.mean([run.results[i].pixel_auroc for run in runs]),
        )
        for i in range(len(methods))
    ]
    lines.append(
        "| **mean** | " + " | ".join(f"**{100 * a:.1f} / {100 * b:.1f}**" for a, b in means) + " |"
    )
    lines += [
        "",
        f"| {what} | "
        + " | ".join(KINDS)
        + f" | recall | false alarms, fresh | false alarms, {held_out} |",
        "|---|" + "---:|" * (len(KINDS) + 3),
    ]
    for run in runs:
        ours = run.results[-1]
        kinds = " | ".join(f"{100 * ours.per_kind[k]:.1f}" for k in KINDS)
        rates = " | ".join(_percent(rate) for rate in _rates(ours))
        lines.append(f"| {run.texture} | {kinds} | {rates} |")
    table = [_rates(run.results[-1]) for run in runs]
    if table and all(rate is not None for row in table for rate in row):
        mean_rates = [float(np.mean([row[i] or 0.0 for row in table])) for i in range(3)]
        bold = " | ".join(f"**{_percent(rate)}**" for rate in mean_rates)
        lines.append("| **mean** |" + " |" * len(KINDS) + f" {bold} |")
    return "\n".join(lines)


def _rates(result: Result) -> list[float | None]:
    """Recall, then the false-alarm rates on the fresh and on the held-out normal images."""
    return [result.recall, result.fresh_false_alarm_rate, result.false_alarm_rate]


def _percent(rate: float | None) -> str:
    return "" if rate is None else f"{100 * rate:.1f}%"


def write_report(
    runs: list[TextureRun],
    directory: Path,
    settings: dict[str, Any],
    stem: str = "textures",
    held_out: str = "held-out region",
    what: str = "texture",
) -> Path:
    """`stem`.md, .json and .png under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.md").write_text(markdown(runs, held_out, what) + "\n")
    payload = {
        "settings": settings,
        stem: {
            run.texture: {"seconds": run.seconds, "results": [asdict(r) for r in run.results]}
            for run in runs
        },
    }
    (directory / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    figure = np.concatenate([run.examples for run in runs], axis=1)
    Image.fromarray(figure).save(directory / f"{stem}.png")
    return directory


def run_textures(
    names: tuple[str, ...],
    work_dir: Path,
    inspection: dict[str, Any],
    whole: dict[str, Any],
    log: Log = print,
    reuse: bool = False,
    build: Callable[[str], TextureSet] = build_texture_set,
    done: Callable[[list[TextureRun]], object] = lambda runs: None,
) -> list[TextureRun]:
    """Each set in turn; `done` sees the runs so far after each, so that a long run
    interrupted part way still leaves a report of what it finished."""
    runs: list[TextureRun] = []
    for name in names:
        runs.append(run_texture(name, work_dir, inspection, whole, log, reuse=reuse, build=build))
        done(runs)
    return runs
