"""Setting a loose part upright: the centre and angle at which an image matches the
normal images.

The density per place (`training.place`) holds what belongs where for a part that sits
in a fixture. A part laid on a belt or a tray any way round breaks it: no few principal
directions hold a part moved and turned through every angle, and the evidence per place
is lost. So each image is first set upright, its part moved to where the training
images have it and turned to their angle, and the density per place is fitted and read
on upright images.

The pose comes from rings about a centre: the image's profile along RINGS circles at
ANGLES angles each. A turn of the part about that centre shifts every ring's profile by
the same angle, and relighting changes a ring's mean and scale but not where its
profile peaks; so, for a given centre, the angle is where the circular
cross-correlation of the image's rings with a reference's, summed over the rings, is
largest (each ring with its mean removed; refined between bins by a parabola). About a
wrong centre the rings are other curves and match the reference worse at every angle,
so the centre is the one, among a grid of centres up to SEARCH from the frame's, whose
best correlation (normalised by both sides' energy) is highest: first a coarse grid,
then a finer one about the best, then a parabola along each axis. The reference is the
mean ring profile of the training images, each first aligned to the running reference
(ROUNDS rounds, from the first image).

Only a part moves and turns as a whole; a surface does not, and its rings agree with no
reference about the frame's centre. About centres sought one by one they agree a little
with anything (a wall of bricks matches itself a brick along), so `training.place`
decides with a registration that does not search (`search` 0) and keeps the search only
where that one has shown the images turn. Outside the disc inscribed in the upright frame
an upright image has no pixels, so there the upright density has no evidence of its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)
from torch import Tensor, nn

RINGS = 32
ANGLES = 256
INNER = 0.15  # of the disc's radius: the first ring (nearer the centre, too few pixels)
OUTER = 0.9  # of the disc's radius: the last ring, so that a moved centre's stay inside
SEARCH = 0.2  # of the half side: how far from the frame's centre a part's centre is sought
COARSE = 9  # centres along each axis of the coarse grid, across +-SEARCH
FINE = 5  # centres along each axis of the fine grid, across +- one coarse step
ROUNDS = 3
COHERENT = 0.5  # the least mean correlation of aligned rings with the reference
BATCH = 64  # images at a time when finding or applying poses
DETAIL = 64  # px: rings are read off the image shrunk to this, so that they do not alias


class Registration(nn.Module):
    """Finds each image's pose against the reference and sets it upright.

    Until `fit_registration` fills `reference` (RINGS, ANGLES) it is empty, and the
    registration is not used. A buffer outside the state dict, exported with the artifact.
    A pose (N, 3) is each image's turn in radians, counter-clockwise, then its part's
    centre (across, down) in the frame's coordinates (-1 to 1 from edge to edge).
    """

    def __init__(self, search: float = SEARCH) -> None:
        super().__init__()
        self.register_buffer("reference", torch.zeros(0, ANGLES), False)
        self.inner = INNER
        self.outer = OUTER
        self.detail = DETAIL
        self.search = search  # 0: every part's centre is the frame's
        self.coarse = COARSE
        self.fine = FINE

    def active(self) -> bool:
        reference: Tensor = self.reference  # type: ignore[assignment]
        return reference.shape[0] > 0

    def poses(self, x: Tensor) -> Tensor:
        """The pose (N, 3) that brings each image of `x` (N, C, S, S) to the reference."""
        reference: Tensor = self.reference  # type: ignore[assignment]
        small = shrunk(x, self.detail)
        centres = torch.zeros_like(x[:, 0, 0, :2])
        if self.search > 0.0:
            step = 2.0 * self.search / (self.coarse - 1)
            start = grid(centres, self.search, self.coarse)
            centres = _best_centres(small, start, reference, self.inner, self.outer)
            centres = _refined_centres(
                small, centres, step, self.fine, reference, self.inner, self.outer
            )
        profiles = rings(small, centres[:, None], reference.shape[0], reference.shape[1],
                         self.inner, self.outer)[:, 0]  # fmt: skip
        turns = -best_shift(correlation(profiles, reference)) * (2.0 * math.pi / reference.shape[1])
        return torch.cat((turns[:, None], centres), 1)

    def forward(self, x: Tensor, poses: Tensor) -> Tensor:
        return upright(x, poses)


def upright(x: Tensor, poses: Tensor) -> Tensor:
    """Each image of `x` (N, C, S, S) with its part's centre moved to the frame's centre
    and turned counter-clockwise by its pose's angle (poses (N, 3), see `Registration`);
    zero outside the inscribed disc, and the frame's edge pixels repeated where the disc
    reaches past it."""
    cos, sin = torch.cos(poses[:, 0]), torch.sin(poses[:, 0])
    # Grid rows point down: the output at u reads the input at R(-angle) u + centre.
    theta = torch.stack(
        (
            torch.stack((cos, -sin, poses[:, 1]), 1),
            torch.stack((sin, cos, poses[:, 2]), 1),
        ),
        1,
    ).to(x.dtype)
    return _warped(x, theta, "border") * disc(x.shape[-1], x.dtype, x.device)


def back(x: Tensor, poses: Tensor) -> Tensor:
    """Upright images `x` (N, C, S, S) returned to the frames of `poses`: the inverse of
    `upright` inside the disc, zero where the upright frame's disc does not reach."""
    cos, sin = torch.cos(poses[:, 0]), torch.sin(poses[:, 0])
    across, down = poses[:, 1], poses[:, 2]
    theta = torch.stack(
        (
            torch.stack((cos, sin, -(cos * across + sin * down)), 1),
            torch.stack((-sin, cos, sin * across - cos * down), 1),
        ),
        1,
    ).to(x.dtype)
    return _warped(x * disc(x.shape[-1], x.dtype, x.device), theta, "zeros")


def _warped(x: Tensor, theta: Tensor, padding: str) -> Tensor:
    sampling = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, sampling, mode="bilinear", padding_mode=padding, align_corners=False)


def disc(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1 inside the disc inscribed in a `size` px square, 0 outside: (size, size)."""
    centres = (torch.arange(size, dtype=dtype, device=device) + 0.5) / size * 2.0 - 1.0
    radius = centres[:, None].pow(2) + centres[None, :].pow(2)
    return (radius <= 1.0).to(dtype)


def shrunk(x: Tensor, detail: int = DETAIL) -> Tensor:
    """`x` (N, C, S, S) averaged over channels and shrunk to `detail` px where larger."""
    if x.shape[-1] > detail:
        x = F.adaptive_avg_pool2d(x, detail)
    return x.mean(1, keepdim=True)


def grid(centres: Tensor, reach: float, count: int) -> Tensor:
    """About each of `centres` (N, 2), the count x count centres (N, count**2, 2) spaced
    evenly across +-reach on each axis."""
    steps = torch.linspace(-reach, reach, count, dtype=centres.dtype, device=centres.device)
    offsets = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), -1).reshape(-1, 2)
    return centres[:, None, :] + offsets[None]


def rings(
    small: Tensor, centres: Tensor, count: int, around: int, inner: float, outer: float = OUTER
) -> Tensor:
    """The profiles (N, K, count, around) of `small` (N, 1, S, S) about each of its K
    centres (N, K, 2), along `count` circles from `inner` to `outer` of the inscribed
    disc's radius, each at `around` angles counter-clockwise from the right, with its own
    mean removed."""
    radii = (
        inner
        + (outer - inner)
        * (torch.arange(count, dtype=small.dtype, device=small.device) + 0.5)
        / count
    )
    steps = torch.arange(around, dtype=small.dtype, device=small.device) * (2.0 * math.pi / around)
    # Grid coordinates: x to the right, y down; counter-clockwise on screen is -y.
    circle = torch.stack(
        (radii[:, None] * torch.cos(steps)[None, :], -radii[:, None] * torch.sin(steps)[None, :]),
        -1,
    )  # (count, around, 2)
    points = centres[:, :, None, None, :] + circle[None, None]  # (N, K, count, around, 2)
    n, k = centres.shape[0], centres.shape[1]
    profiles = F.grid_sample(
        small,
        points.reshape(n, k * count, around, 2),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    ).reshape(n, k, count, around)
    return profiles - profiles.mean(-1, keepdim=True)


def correlation(profiles: Tensor, reference: Tensor) -> Tensor:
    """The circular cross-correlation (..., around) of ring profiles (..., R, A) with the
    reference's (R, A), summed over the rings: entry s is how well the profiles match the
    reference turned by s bins."""
    spectrum = torch.fft.rfft(profiles, dim=-1) * torch.conj(torch.fft.rfft(reference, dim=-1))
    return torch.fft.irfft(spectrum.sum(-2), n=profiles.shape[-1], dim=-1)


def agreement(profiles: Tensor, reference: Tensor) -> Tensor:
    """The best normalised correlation (..., ) over all turns of the profiles
    (..., R, A) with the reference: 1 for the reference itself, turned or relit."""
    energy = profiles.pow(2).sum((-2, -1)).sqrt() * reference.pow(2).sum().sqrt()
    return correlation(profiles, reference).amax(-1) / energy.clamp(min=1e-12)


def best_shift(correlations: Tensor) -> Tensor:
    """Where each row of `correlations` (N, A) peaks, in bins in (-A/2, A/2], refined
    between bins by the parabola through the peak and its two neighbours."""
    around = correlations.shape[-1]
    peak = correlations.argmax(-1)
    rows = torch.arange(len(correlations), device=correlations.device)
    before = correlations[rows, (peak - 1) % around]
    at = correlations[rows, peak]
    after = correlations[rows, (peak + 1) % around]
    shift = peak.to(correlations.dtype) + _vertex(before, at, after)
    return torch.remainder(shift + around / 2.0, float(around)) - around / 2.0


def _vertex(before: Tensor, at: Tensor, after: Tensor) -> Tensor:
    """Where the parabola through three evenly spaced values peaks, in steps from the
    middle one, within half a step; 0 where they do not bend down."""
    bend = before - 2.0 * at + after
    offset = torch.where(
        bend < 0, 0.5 * (before - after) / bend.clamp(max=-1e-12), torch.zeros_like(at)
    )
    return offset.clamp(-0.5, 0.5)


def _best_centres(
    small: Tensor, centres: Tensor, reference: Tensor, inner: float, outer: float
) -> Tensor:
    """Of each image's candidate centres (N, K, 2), the one (N, 2) whose rings agree
    best with the reference."""
    fits = agreement(rings(small, centres, reference.shape[0], reference.shape[1], inner,
                           outer), reference)  # fmt: skip
    rows = torch.arange(len(centres), device=centres.device)
    return centres[rows, fits.argmax(1)]


def _refined_centres(
    small: Tensor,
    centres: Tensor,
    step: float,
    count: int,
    reference: Tensor,
    inner: float,
    outer: float,
) -> Tensor:
    """Each image's centre (N, 2) refined: the best of a `count` x `count` grid across
    one coarse `step` each way, then the parabola's vertex along each axis about it."""
    candidates = grid(centres, step, count)
    fits = agreement(rings(small, candidates, reference.shape[0], reference.shape[1], inner,
                           outer), reference).reshape(-1, count, count)  # fmt: skip
    best = fits.flatten(1).argmax(1)
    row, column = best // count, best % count
    rows = torch.arange(len(centres), device=centres.device)
    fine = 2.0 * step / (count - 1)
    left = fits[rows, row, (column - 1).clamp(min=0)]
    right = fits[rows, row, (column + 1).clamp(max=count - 1)]
    up = fits[rows, (row - 1).clamp(min=0), column]
    down = fits[rows, (row + 1).clamp(max=count - 1), column]
    at = fits[rows, row, column]
    inside_across = (column > 0) & (column < count - 1)
    inside_down = (row > 0) & (row < count - 1)
    across = torch.where(inside_across, _vertex(left, at, right), torch.zeros_like(at))
    downward = torch.where(inside_down, _vertex(up, at, down), torch.zeros_like(at))
    chosen = candidates[rows, best]
    return chosen + fine * torch.stack((across, downward), 1)


@torch.no_grad()
def fit_registration(registration: Registration, images: Tensor) -> Registration:
    """Fill the reference from `images` (N, C, S, S): the mean ring profile of the
    images, each aligned to the running mean, ROUNDS times, from the first image about
    the frame's centre."""
    first = shrunk(images[:1].float(), registration.detail)
    reference = rings(first, torch.zeros(1, 1, 2), RINGS, ANGLES, registration.inner,
                      registration.outer)[0, 0]  # fmt: skip
    for _ in range(ROUNDS):
        registration.reference = reference.contiguous()
        reference = _aligned_profiles(registration, images).mean(0)
    registration.reference = reference.contiguous()
    return registration


@torch.no_grad()
def coherence(registration: Registration, images: Tensor) -> float:
    """The mean correlation of the images' aligned rings with the reference: near 1 for
    a part moved and turned as a whole, near 0 for a surface."""
    reference: Tensor = registration.reference  # type: ignore[assignment]
    return float(agreement(_aligned_profiles(registration, images), reference).mean())


@torch.no_grad()
def poses_of(registration: Registration, images: Tensor) -> Tensor:
    """The poses (N, 3) of `images` against the reference, BATCH images at a time."""
    return torch.cat([registration.poses(part.float()) for part in images.split(BATCH)])


@torch.no_grad()
def upright_by(images: Tensor, poses: Tensor) -> Tensor:
    """`images` set upright by `poses`, BATCH images at a time."""
    return torch.cat(
        [
            upright(part.float(), by)
            for part, by in zip(images.split(BATCH), poses.split(BATCH), strict=True)
        ]
    )


def _aligned_profiles(registration: Registration, images: Tensor) -> Tensor:
    """Each image's ring profiles (N, R, A) about its found centre, turned by whole bins
    to match the reference."""
    reference: Tensor = registration.reference  # type: ignore[assignment]
    aligned = []
    for part in images.split(BATCH):
        poses = registration.poses(part.float())
        small = shrunk(part.float(), registration.detail)
        profiles = rings(small, poses[:, None, 1:], reference.shape[0], reference.shape[1],
                         registration.inner, registration.outer)[:, 0]  # fmt: skip
        shifts = torch.round(best_shift(correlation(profiles, reference))).long()
        around = profiles.shape[-1]
        index = (torch.arange(around)[None, :] + shifts[:, None]) % around
        aligned.append(torch.gather(profiles, 2, index[:, None, :].expand_as(profiles)))
    return torch.cat(aligned)
