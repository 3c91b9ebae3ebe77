"""Turning a part upright: the angle at which an image matches the normal images.

The density per place (`training.place`) holds what belongs where for a part that sits
in a fixture. A part laid on a belt or a tray any way round breaks it: no few principal
directions hold a part turned through every angle, and the evidence per place is lost.
So each image is first turned to the angle at which it matches the training images,
and the density per place is fitted and read on upright images.

The angle comes from rings about the frame's centre: each image's profile along RINGS
circles inside the inscribed disc, at ANGLES angles. A turn of the part about the centre
shifts every ring's profile by the same angle, and relighting changes a ring's mean and
scale but not where its profile peaks, so the angle is where the circular
cross-correlation of the image's rings with a reference's, summed over the rings, is
largest (each ring with its mean removed; refined between bins by a parabola). The
reference is the mean ring profile of the training images, each first aligned to the
running reference (ROUNDS rounds, from the first image).

Only a part turns about the frame's centre; a surface does not, and its rings agree
with no reference. So the registration is kept only when the aligned training images'
rings agree with the reference (`coherence` at least COHERENT) and turning leaves less of
the held-out images unexplained (`training.place`). Outside the inscribed disc a turned
image has no pixels, so there the turned density has no evidence of its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)
from torch import Tensor, nn

RINGS = 32
ANGLES = 256
INNER = 0.15  # of the disc's radius: the first ring (nearer the centre, too few pixels)
ROUNDS = 3
COHERENT = 0.5  # the least mean correlation of aligned rings with the reference
BATCH = 64  # images at a time when finding or applying turns
DETAIL = 64  # px: rings are read off the image shrunk to this, so that they do not alias


class Registration(nn.Module):
    """Finds each image's turn to the reference and applies it.

    Until `fit_registration` fills `reference` (RINGS, ANGLES) it is empty, and the
    registration is not used. A buffer outside the state dict, exported with the artifact.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("reference", torch.zeros(0, ANGLES), False)
        self.inner = INNER
        self.detail = DETAIL

    def active(self) -> bool:
        reference: Tensor = self.reference  # type: ignore[assignment]
        return reference.shape[0] > 0

    def angles(self, x: Tensor) -> Tensor:
        """The turn (N,) in radians, counter-clockwise, that brings each image of `x`
        (N, C, S, S) to the reference."""
        reference: Tensor = self.reference  # type: ignore[assignment]
        profiles = rings(x, reference.shape[0], reference.shape[1], self.inner, self.detail)
        return -best_shift(correlation(profiles, reference)) * (2.0 * math.pi / reference.shape[1])

    def forward(self, x: Tensor, angles: Tensor) -> Tensor:
        return turn(x, angles)


def turn(x: Tensor, angles: Tensor) -> Tensor:
    """Each image of `x` (N, C, S, S) turned counter-clockwise by its angle (N,) in
    radians about the frame's centre, zero outside the inscribed disc."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    # Grid rows point down: the output at (u, v) reads the input turned back by the angle.
    theta = torch.stack(
        (
            torch.stack((cos, -sin, torch.zeros_like(cos)), 1),
            torch.stack((sin, cos, torch.zeros_like(cos)), 1),
        ),
        1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    turned = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return turned * disc(x.shape[-1], x.dtype, x.device)


def disc(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1 inside the disc inscribed in a `size` px square, 0 outside: (size, size)."""
    centres = (torch.arange(size, dtype=dtype, device=device) + 0.5) / size * 2.0 - 1.0
    radius = centres[:, None].pow(2) + centres[None, :].pow(2)
    return (radius <= 1.0).to(dtype)


def rings(x: Tensor, count: int, around: int, inner: float, detail: int = DETAIL) -> Tensor:
    """The profiles (N, count, around) of `x` (N, C, S, S), averaged over channels,
    along `count` circles from `inner` to the edge of the inscribed disc, each at
    `around` angles counter-clockwise from the right, with its own mean removed; read
    off `x` shrunk to `detail` px where it is larger."""
    if x.shape[-1] > detail:
        x = F.adaptive_avg_pool2d(x, detail)
    radii = (
        inner + (1.0 - inner) * (torch.arange(count, dtype=x.dtype, device=x.device) + 0.5) / count
    )
    steps = torch.arange(around, dtype=x.dtype, device=x.device) * (2.0 * math.pi / around)
    # Grid coordinates: x to the right, y down; counter-clockwise on screen is -y.
    across = radii[:, None] * torch.cos(steps)[None, :]
    down = -radii[:, None] * torch.sin(steps)[None, :]
    grid = torch.stack((across, down), -1).unsqueeze(0).expand(x.shape[0], count, around, 2)
    profiles = F.grid_sample(
        x.mean(1, keepdim=True), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[:, 0]
    return profiles - profiles.mean(-1, keepdim=True)


def correlation(profiles: Tensor, reference: Tensor) -> Tensor:
    """The circular cross-correlation (N, around) of each image's ring profiles (N, R, A)
    with the reference's (R, A), summed over the rings: entry s is how well the profiles
    match the reference turned by s bins."""
    spectrum = torch.fft.rfft(profiles, dim=-1) * torch.conj(torch.fft.rfft(reference, dim=-1))
    return torch.fft.irfft(spectrum.sum(1), n=profiles.shape[-1], dim=-1)


def best_shift(correlations: Tensor) -> Tensor:
    """Where each row of `correlations` (N, A) peaks, in bins in (-A/2, A/2], refined
    between bins by the parabola through the peak and its two neighbours."""
    around = correlations.shape[-1]
    peak = correlations.argmax(-1)
    rows = torch.arange(len(correlations), device=correlations.device)
    before = correlations[rows, (peak - 1) % around]
    at = correlations[rows, peak]
    after = correlations[rows, (peak + 1) % around]
    bend = before - 2.0 * at + after
    offset = torch.where(
        bend < 0, 0.5 * (before - after) / bend.clamp(max=-1e-12), torch.zeros_like(at)
    )
    shift = peak.to(correlations.dtype) + offset.clamp(-0.5, 0.5)
    return torch.remainder(shift + around / 2.0, float(around)) - around / 2.0


@torch.no_grad()
def fit_registration(registration: Registration, images: Tensor) -> Registration:
    """Fill the reference from `images` (N, C, S, S): the mean ring profile of the
    images, each aligned to the running mean, ROUNDS times, from the first image."""
    profiles = _all_rings(registration, images)
    reference = profiles[0]
    for _ in range(ROUNDS):
        reference = _aligned(profiles, reference).mean(0)
    registration.reference = reference.contiguous()
    return registration


@torch.no_grad()
def coherence(registration: Registration, images: Tensor) -> float:
    """The mean correlation of the images' aligned rings with the reference: near 1 for
    a part turned about the centre, near 0 for a surface."""
    reference: Tensor = registration.reference  # type: ignore[assignment]
    aligned = _aligned(_all_rings(registration, images), reference).flatten(1)
    flat = reference.flatten()
    score = (aligned @ flat) / (aligned.norm(dim=1) * flat.norm()).clamp(min=1e-12)
    return float(score.mean())


@torch.no_grad()
def angles_of(registration: Registration, images: Tensor) -> Tensor:
    """The turns (N,) of `images` to the reference, BATCH images at a time."""
    return torch.cat([registration.angles(part.float()) for part in images.split(BATCH)])


@torch.no_grad()
def turned_by(images: Tensor, angles: Tensor) -> Tensor:
    """`images` turned by `angles`, BATCH images at a time."""
    return torch.cat(
        [
            turn(part.float(), by)
            for part, by in zip(images.split(BATCH), angles.split(BATCH), strict=True)
        ]
    )


def _all_rings(registration: Registration, images: Tensor) -> Tensor:
    return torch.cat(
        [
            rings(part.float(), RINGS, ANGLES, registration.inner, registration.detail)
            for part in images.split(BATCH)
        ]
    )


def _aligned(profiles: Tensor, reference: Tensor) -> Tensor:
    """Each image's profiles (N, R, A) turned by whole bins to match `reference`."""
    shifts = torch.round(best_shift(correlation(profiles, reference))).long()
    around = profiles.shape[-1]
    index = (torch.arange(around, device=profiles.device)[None, :] + shifts[:, None]) % around
    return torch.gather(profiles, 2, index[:, None, :].expand_as(profiles))
