"""Synthetic defects drawn on normal images, each with its pixel mask.

Users of an inspection model have normal images only. To choose a setting (score
pooling, smoothing, resolution) without anomalies, the recipe draws defects on
held-out normal images and picks what separates them best; the shipped texture
benchmark (`training.inspection`) measures with the same families on other images.

Every family imitates what an inspection camera sees go wrong on a surface:

    scratch   a thin bright or dark stroke, 1-3 px, gently curved
    crack     a dark, thin, jagged line that may branch
    hole      a dark blob with soft edges (pits, pores, blowholes)
    stain     a faint, wide discolouration (brightness, or hue on colour images)
    missing   a region whose texture is gone: filled flat, as if worn or chipped
    paste     a patch of another place or another image pasted in (cut-and-paste)

Images are float arrays (H, W, C) in [0, 1]; masks are bool (H, W), True where the
pixels were changed visibly. Sizes scale with the image, so a defect on a 1024 px
image is as large, relative to it, as on a 128 px one, with a floor of a pixel or two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("scratch", "crack", "hole", "stain", "missing", "paste")
SUPERSAMPLE = 4  # strokes are drawn 4x larger and shrunk: anti-aliased edges, sub-pixel widths
VISIBLE = 0.02  # a pixel counts as defective when it changed by more than this


@dataclass(frozen=True)
class Defect:
    image: np.ndarray  # (H, W, C) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool
    kind: str


def draw_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray | None = None
) -> Defect:
    """Draw one defect of `kind` on a copy of `image`; `donor` feeds `paste` (else itself)."""
    if kind not in DRAW:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(KINDS)}")
    base = np.asarray(image, dtype=np.float32)
    base = base[:, :, None] if base.ndim == 2 else base
    for _ in range(8):  # a faint draw on a flat spot can change nothing: draw again
        changed = DRAW[kind](base, rng, base if donor is None else _hwc(donor))
        changed = np.clip(changed, 0.0, 1.0).astype(np.float32)
        mask = np.abs(changed - base).max(axis=2) > VISIBLE
        if mask.sum() >= 2:
            return Defect(changed, mask, kind)
    return Defect(changed, mask, kind)


def _hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    return image[:, :, None] if image.ndim == 2 else image


def _side(image: np.ndarray) -> int:
    return min(image.shape[0], image.shape[1])


def _stroke_mask(
    shape: tuple[int, int], paths: list[list[tuple[float, float]]], width: float
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of polylines `paths` of `width` pixels: (H, W)."""
    height, width_px = shape
    canvas = Image.new("L", (width_px * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(width * SUPERSAMPLE))
    for path in paths:
        points = [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in path]
        draw.line(points, fill=255, width=line, joint="curve")
    small = canvas.resize((width_px, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _walk(
    rng: np.random.Generator, shape: tuple[int, int], length: float, turn: float
) -> list[tuple[float, float]]:
    """A random walk of about `length` px whose heading changes by up to `turn` rad a step."""
    height, width = shape
    x, y = rng.uniform(0.15 * width, 0.85 * width), rng.uniform(0.15 * height, 0.85 * height)
    heading = rng.uniform(0, 2 * np.pi)
    step = max(1.0, length / 24)
    points = [(x, y)]
    for _ in range(int(length / step)):
        heading += rng.uniform(-turn, turn)
        x, y = x + step * np.cos(heading), y + step * np.sin(heading)
        points.append((x, y))
    return points


def _blend(base: np.ndarray, coverage: np.ndarray, target: np.ndarray) -> np.ndarray:
    alpha = coverage[:, :, None]
    return base * (1.0 - alpha) + target * alpha


def _scratch(base: np.ndarray, rng: np.random.Generator, _: np.ndarray) -> np.ndarray:
    side = _side(base)
    path = _walk(rng, base.shape[:2], rng.uniform(0.2, 0.6) * side, turn=0.15)
    coverage = _stroke_mask(base.shape[:2], [path], rng.uniform(1.0, 3.0) * max(1, side // 256))
    contrast = rng.uniform(0.2, 0.5) * rng.choice([-1.0, 1.0])
    return _blend(base, coverage, np.clip(base + contrast, 0.0, 1.0))


def _crack(base: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    side = _side(base)
    trunk = _walk(rng, base.shape[:2], rng.uniform(0.2, 0.5) * side, turn=0.7)
    paths = [trunk]
    for _branch in range(rng.integers(0, 3)):  # branches leave the trunk at a random point
        start = trunk[rng.integers(0, len(trunk))]
        branch = _walk(rng, base.shape[:2], rng.uniform(0.05, 0.2) * side, turn=0.8)
        dx, dy = start[0] - branch[0][0], start[1] - branch[0][1]
        paths.append([(x + dx, y + dy) for x, y in branch])
    coverage = _stroke_mask(base.shape[:2], paths, rng.uniform(0.7, 2.0) * max(1, side // 256))
    return _blend(base, coverage, base * rng.uniform(0.05, 0.5))


def _ellipse_coverage(
    rng: np.random.Generator, shape: tuple[int, int], radius: float, softness: float
) -> np.ndarray:
    """A rotated ellipse of about `radius` px, edges blurred by `softness` px: (H, W)."""
    height, width = shape
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    ry, rx = radius * rng.uniform(0.6, 1.4), radius * rng.uniform(0.6, 1.4)
    angle = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
    v = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
    distance = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)  # 1 on the rim
    return np.clip((1.0 - distance) * min(rx, ry) / max(softness, 0.5) + 0.5, 0.0, 1.0)


def _hole(base: np.ndarray, rng: np.random.Generator, _: np.ndarray) -> np.ndarray:
    radius = max(1.5, rng.uniform(0.015, 0.06) * _side(base))
    coverage = _ellipse_coverage(rng, base.shape[:2], radius, softness=radius * 0.3)
    return _blend(base, coverage, base * rng.uniform(0.0, 0.35))


def _stain(base: np.ndarray, rng: np.random.Generator, _: np.ndarray) -> np.ndarray:
    radius = max(3.0, rng.uniform(0.06, 0.15) * _side(base))
    coverage = _ellipse_coverage(rng, base.shape[:2], radius, softness=radius * 0.6)
    if base.shape[2] == 3:  # a colour cast, as rust, oil or dye leave
        shift = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
        shift *= rng.uniform(0.15, 0.3) / max(float(np.abs(shift).max()), 1e-6)
    else:
        shift = np.full(1, rng.uniform(0.12, 0.3) * rng.choice([-1.0, 1.0]), np.float32)
    return _blend(base, coverage, np.clip(base + shift, 0.0, 1.0))


def _missing(base: np.ndarray, rng: np.random.Generator, _: np.ndarray) -> np.ndarray:
    radius = max(2.0, rng.uniform(0.04, 0.1) * _side(base))
    coverage = _ellipse_coverage(rng, base.shape[:2], radius, softness=1.0)
    region = coverage > 0.5
    fill = base[region].mean(axis=0) if region.any() else base.mean(axis=(0, 1))
    fill = np.clip(fill * rng.uniform(0.7, 1.3), 0.0, 1.0)  # worn smooth, a shade off
    return _blend(base, coverage, np.broadcast_to(fill, base.shape))


def _paste(base: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    """A patch of `donor` (elsewhere, turned a quarter or more) pasted in a blob (CutPaste)."""
    height, width = base.shape[:2]
    radius = max(2.0, rng.uniform(0.05, 0.12) * _side(base))
    coverage = _ellipse_coverage(rng, (height, width), radius, softness=1.0)
    source = np.ascontiguousarray(np.rot90(donor, k=int(rng.integers(1, 4))))
    if source.shape[0] < height or source.shape[1] < width:
        scale = max(height / source.shape[0], width / source.shape[1])
        size = (int(np.ceil(source.shape[1] * scale)), int(np.ceil(source.shape[0] * scale)))
        planes = [
            Image.fromarray(source[:, :, c], mode="F").resize(size) for c in range(source.shape[2])
        ]
        source = np.stack([np.asarray(p) for p in planes], axis=2)
    top = int(rng.integers(0, source.shape[0] - height + 1))
    left = int(rng.integers(0, source.shape[1] - width + 1))
    patch = source[top : top + height, left : left + width]
    if patch.shape[2] != base.shape[2]:
        patch = np.broadcast_to(patch.mean(axis=2, keepdims=True), base.shape)
    return _blend(base, coverage, patch)


DRAW: dict[str, Callable[[np.ndarray, np.random.Generator, np.ndarray], np.ndarray]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "missing": _missing,
    "paste": _paste,
}
