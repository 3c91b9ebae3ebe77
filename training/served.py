"""Measure a running service on labelled images: `python -m training.evaluate served`.

The benchmarks score crops in-process; an operator's question is what the service says
about their own full-size files. This uploads every test image of a folder in the MVTec
AD layout (`training.folders`) to `/anomaly` with its heat map, exactly as a client
would, and reports from the answers alone:

    image AUROC   per kind of defect and over all, against the good test images
    pixel AUROC   of the returned heat maps against the masks (every pixel of a good
                  image counts as normal), on a grid of at most PIXELS_PER_IMAGE per image
    recall        the share of each kind the service flags (`is_anomaly`)
    false alarms  the share of good images it flags, beside the rate the model promises

and, per image, its score and verdict (in the JSON), and the service's overlay PNG where
`overlays` names a folder, so that the misses and the false alarms can be looked at.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from training.errors import TrainingError
from training.folders import GOOD, Case, labelled_cases, read_mask
from training.progress import Log, ProgressMeter
from training.roc import auroc
from vae_client import VAEClient, VAEError
from vae_client.results import AnomalyResult

PIXELS_PER_IMAGE = 40_000  # bounds the pixel AUROC's memory on large uploads


@dataclass(frozen=True)
class Answer:
    """What the service said of one case, reduced to what the figures need."""

    case: Case
    score: float
    flagged: bool
    map_values: np.ndarray | None  # the heat map's pixels on the sampling grid
    mask_values: np.ndarray | None  # the mask's pixels on the same grid (None: no mask)
    scale: str | None  # how the heat map reads: "absolute" or "relative"


@dataclass
class KindFigures:
    images: int
    image_auroc: float
    recall: float


@dataclass
class ServedReport:
    url: str
    model: str
    threshold: float
    promised_false_alarm_rate: float | None
    heatmap_scale: str | None
    good_images: int
    defective_images: int
    image_auroc: float
    pixel_auroc: float | None  # None where no defect has a mask
    recall: float
    false_alarm_rate: float
    kinds: dict[str, KindFigures] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)  # path, kind, score, flagged

    def markdown(self) -> str:
        rows = [
            f"| {kind} | {k.images} | {100 * k.image_auroc:.1f} | {100 * k.recall:.1f}% |"
            for kind, k in self.kinds.items()
        ]
        pixel = "n/a" if self.pixel_auroc is None else f"{100 * self.pixel_auroc:.1f}"
        promised = (
            ""
            if self.promised_false_alarm_rate is None
            else f" (promised {100 * self.promised_false_alarm_rate:.1f}%)"
        )
        return "\n".join(
            [
                f"model {self.model} at {self.url}: threshold {self.threshold:.4g}, "
                f"heat maps {self.heatmap_scale or 'not returned'}",
                "",
                "| kind | images | image AUROC | recall |",
                "|---|---:|---:|---:|",
                *rows,
                f"| **all defects** | {self.defective_images} | {100 * self.image_auroc:.1f} | "
                f"{100 * self.recall:.1f}% |",
                "",
                f"pixel AUROC {pixel}; false alarms {100 * self.false_alarm_rate:.1f}% of "
                f"{self.good_images} good images{promised}",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_served(
    root: Path,
    client: VAEClient,
    url: str,
    concurrency: int = 4,
    overlays: Path | None = None,
    log: Log = print,
) -> ServedReport:
    """Upload every test image under `root` through `client` and measure the answers.
    `concurrency` requests are in flight at once, so that the service can batch them;
    each answer's overlay is written to `overlays`/<kind>/<name>.png when it is given."""
    cases = labelled_cases(root)
    info = _model_info(client, url)
    meter = ProgressMeter(len(cases), "uploads", log)
    answers = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        try:
            for answer in pool.map(lambda case: _ask(client, url, case, overlays), cases):
                answers.append(answer)
                meter.update(1)
        except TrainingError:  # one bad answer ends the run: do not upload the rest
            pool.shutdown(cancel_futures=True)
            raise
        finally:
            meter.close()
    calibration = info.metadata.get("calibration") or {}
    return _report(answers, url, info.name, calibration)


def _model_info(client: VAEClient, url: str) -> Any:
    try:
        return client.model_info()
    except httpx.HTTPError as exc:
        raise TrainingError(f"cannot reach the service at {url}: {exc}") from None
    except VAEError as exc:
        raise TrainingError(f"{url}/model: {exc}") from None


def _ask(client: VAEClient, url: str, case: Case, overlays: Path | None) -> Answer:
    try:
        result = client.anomaly([case.path.read_bytes()], heatmap=True)[0]
    except httpx.HTTPError as exc:
        raise TrainingError(f"{case.path}: the service at {url} did not answer ({exc})") from None
    except VAEError as exc:
        raise TrainingError(f"{case.path}: the service refused it: {exc}") from None
    except OSError as exc:
        raise TrainingError(f"{case.path}: cannot read it ({exc})") from None
    if overlays is not None and result.overlay is not None:
        folder = overlays / case.kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{case.path.stem}.png").write_bytes(result.overlay)
    values, mask = _pixels(case, result)
    return Answer(case, result.score, result.is_anomaly, values, mask, result.heatmap_scale)


def _pixels(case: Case, result: AnomalyResult) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The heat map's and the mask's pixels on one grid, at the heat map's size."""
    if result.heatmap is None:
        return None, None
    with Image.open(io.BytesIO(result.heatmap)) as image:
        heat = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    height, width = heat.shape
    if case.kind == GOOD:
        mask = np.zeros_like(heat, dtype=bool)
    elif case.mask is not None:
        mask = read_mask(case.mask, (width, height))
    else:
        return _grid(heat), None
    return _grid(heat), _grid(mask)


def _grid(pixels: np.ndarray) -> np.ndarray:
    stride = max(1, math.ceil(math.sqrt(pixels.size / PIXELS_PER_IMAGE)))
    return pixels[::stride, ::stride].flatten()


def _report(
    answers: list[Answer], url: str, model: str, calibration: dict[str, Any]
) -> ServedReport:
    good = [a for a in answers if a.case.kind == GOOD]
    bad = [a for a in answers if a.case.kind != GOOD]
    good_scores = _scores(good)
    kinds = {
        kind: _kind_figures(good_scores, [a for a in bad if a.case.kind == kind])
        for kind in dict.fromkeys(a.case.kind for a in bad)
    }
    promised = calibration.get("expected_false_alarm_rate", calibration.get("false_alarm_rate"))
    return ServedReport(
        url=url,
        model=model,
        threshold=float(calibration.get("threshold", float("nan"))),
        promised_false_alarm_rate=promised,
        heatmap_scale=_scale(answers),
        good_images=len(good),
        defective_images=len(bad),
        image_auroc=auroc(good_scores, _scores(bad)),
        pixel_auroc=_pixel_auroc(answers),
        recall=_flagged(bad),
        false_alarm_rate=_flagged(good),
        kinds=kinds,
        images=[
            {"path": str(a.case.path), "kind": a.case.kind, "score": a.score, "flagged": a.flagged}
            for a in answers
        ],
    )


def _kind_figures(good_scores: torch.Tensor, answers: list[Answer]) -> KindFigures:
    return KindFigures(len(answers), auroc(good_scores, _scores(answers)), _flagged(answers))


def _scores(answers: list[Answer]) -> torch.Tensor:
    return torch.tensor([a.score for a in answers], dtype=torch.float64)


def _flagged(answers: list[Answer]) -> float:
    return sum(a.flagged for a in answers) / len(answers)


def _pixel_auroc(answers: list[Answer]) -> float | None:
    pairs = [(a.map_values, a.mask_values) for a in answers]
    pairs = [(v, m) for v, m in pairs if v is not None and m is not None]
    if not pairs:
        return None
    values = torch.from_numpy(np.concatenate([v for v, _ in pairs]))
    masks = torch.from_numpy(np.concatenate([m for _, m in pairs]))
    if not bool(masks.any()):
        return None
    return auroc(values[~masks], values[masks])


def _scale(answers: list[Answer]) -> str | None:
    scales = {a.scale for a in answers}
    return next(iter(scales)) if len(scales) == 1 else "mixed"
