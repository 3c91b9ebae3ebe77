"""A density of normal images per place: what belongs where, for parts in a fixture.

The patch density (`training.density`) is shared by every position: a surface's
statistics do not depend on where a crop was cut. A camera over a fixture sees the same
part in nearly the same place every time, and there a bright patch that would be
normal anywhere on the part is a defect where the part is dark. So the training images,
each as one vector of the working size, get a Gaussian of their own: their mean, the
principal directions that hold most of their variance (the part a little shifted,
turned or relit moves an image along a few of them), and, beside that subspace, a
spread per pixel. The evidence at a pixel is the image's residual there, after its
projection onto the principal directions, standardised by that spread and squared,
summed over channels: PaDiM's per-position density (Defard et al. 2020) with raw pixels
in place of a pretrained network's features, and the classic PCA reconstruction error
made local. The spread is measured on training images the directions were not fitted
on (the fitted ones lie nearer their own subspace than new images do), and floored at a
share of its mean, so that a place that never changes (a black border, a saturated
highlight) does not turn a little noise there into a defect.

A part that lies any way round is first set upright (`training.register`): moved to
where the training images have it and turned to their angle; the Gaussian is then of
upright images, and each image's map is returned to its own frame. That is kept only
where the frame is square, the training images agree on an upright about the frame's
centre (`register.coherence`), and turning about it leaves at most KEEP_TURN of the
held-out images' residual energy that the plain Gaussian leaves (measured over the same
disc); then each part's own centre is also sought where that leaves less still.
Outside the inscribed disc a turned image has no pixels and so no evidence; the map
there is the value a normal place has on average (1 per channel, the spread being
measured on held-out images), so that a corner neither hides nor fakes a defect.

Where the images are not aligned even so (random crops of a surface), no few
directions hold them and the residual is most of every image; the validation choice
(`training.selection`) then gives the evidence no share, and a map without a share is
not computed. It exists at the fitted size only, which is the exported size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training import register
from training.progress import Log
from training.register import Registration, back, fit_registration, poses_of, upright, upright_by

VARIANCE = 0.99  # of the fitting images' variance that the principal directions hold
MAX_DIRECTIONS = 256
MAX_BASIS = 1 << 24  # floats in the directions (64 MB): fewer directions for large images
SPREAD_SHARE = 0.25  # of the training images that measure the spread, not the directions
FLOOR = 0.25  # of the mean spread: the least spread a place is given
KEEP_TURN = 0.75  # turned residual energy over plain: at most this, or the turn is dropped


class PlaceDensity(nn.Module):
    """Per pixel, one channel: the squared standardised residual beside the principal
    directions of the normal images.

    Until `fit_place_density` fills it there are no directions, and every value is 0.
    Its tensors are buffers outside the state dict, fitted from the training images and
    exported with the artifact; with a fitted `registration`, each image is turned
    upright first and its map turned back.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels, 1, 1), False)
        self.register_buffer("basis", torch.zeros(0, channels), False)  # (K, C*H*W)
        self.register_buffer("inverse_spread", torch.zeros(channels, 1, 1), False)
        self.registration = Registration()

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, 1, H, W)
        basis: Tensor = self.basis  # type: ignore[assignment]
        if basis.shape[0] == 0:
            return torch.zeros_like(x[:, :1])
        if self.registration.active():
            poses = self.registration.poses(x)
            outside = 1.0 - back(torch.ones_like(x[:, :1]), poses)
            return back(self.standardised(upright(x, poses)), poses) + outside * x.shape[1]
        return self.standardised(x)

    def standardised(self, x: Tensor) -> Tensor:
        """The squared standardised residual (N, 1, H, W), summed over channels."""
        inverse: Tensor = self.inverse_spread  # type: ignore[assignment]
        return (self.residual(x) * inverse).pow(2).sum(1, keepdim=True)

    def residual(self, x: Tensor) -> Tensor:
        """What of each image (N, C, H, W) its principal directions do not explain."""
        mean: Tensor = self.mean  # type: ignore[assignment]
        basis: Tensor = self.basis  # type: ignore[assignment]
        centred = (x - mean).flatten(1)
        return (centred - (centred @ basis.T) @ basis).view_as(x)


def directions(density: PlaceDensity) -> int:
    """How many principal directions `density` keeps (0: unfitted)."""
    basis: Tensor = density.basis  # type: ignore[assignment]
    return int(basis.shape[0])


def turns(density: PlaceDensity) -> bool:
    """Whether `density` turns each image upright first."""
    return density.registration.active()


def centres(density: PlaceDensity) -> bool:
    """Whether `density` also finds each image's own centre before turning it."""
    return turns(density) and density.registration.search > 0.0


@torch.no_grad()
def fit_place_density(
    density: PlaceDensity, images: Tensor, seed: int = 0, log: Log | None = None
) -> PlaceDensity:
    """Fill `density` from `images` (N, C, H, W), all of one size (the working size): the
    directions from a random 3/4 of them, the spread from the rest; turned upright first
    where that explains the held-out images better (see the module's note). `log` hears
    the decision and the figures that took it."""
    if len(images) < 4:
        raise ValueError("fitting a density per place needs at least 4 images")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held = max(1, round(SPREAD_SHARE * len(images)))
    fitting, measuring = images[order[held:]], images[order[:held]]
    log = log or _silent
    if fitting.shape[-1] != fitting.shape[-2]:
        _fit_gaussian(density, fitting, measuring)
        return density
    # Unmoved first: about the frame's centre, as a fixture holds a part. A search for
    # each part's own centre finds some match in any surface (a wall of bricks matches
    # itself a brick along) and so fits any held-out image a little better: it decides
    # nothing, and is kept only where the unmoved turn has shown that the images turn.
    unmoved = fit_registration(Registration(search=0.0), fitting)
    agreement = register.coherence(unmoved, fitting)
    if agreement < register.COHERENT:
        log(f"density per place: not turned upright (rings agree {agreement:.2f}, "
            f"below {register.COHERENT})")  # fmt: skip
        _fit_gaussian(density, fitting, measuring)
        return density
    searching = fit_registration(Registration(), fitting)
    candidates = [_upright_views(r, fitting, measuring) for r in (unmoved, searching)]
    plain = _fit_gaussian(density, fitting, measuring)  # changes `fitting`: it comes last
    fits = [_upright_fit(plain, views) for views in candidates]
    left, moved = fits[0][1], fits[1][1]
    kept = left <= KEEP_TURN
    log(
        f"density per place: {'turned' if kept else 'not turned'} upright (rings agree "
        f"{agreement:.2f}; upright, {left:.2f} of the plain residual on held-out training "
        f"images is left, {moved:.2f} with each part's own centre found; at most "
        f"{KEEP_TURN} turns)"
    )
    if not kept:
        return density
    best = 1 if moved < left else 0
    standing = fits[best][0]
    density.mean, density.basis = standing.mean, standing.basis
    density.inverse_spread = standing.inverse_spread
    density.registration = (unmoved, searching)[best]
    return density


def _upright_views(
    registration: Registration, fitting: Tensor, measuring: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The fitting and measuring images set upright by `registration`, and the
    measuring images' poses."""
    measured = poses_of(registration, measuring)
    upright_fitting = upright_by(fitting, poses_of(registration, fitting))
    return upright_fitting, upright_by(measuring, measured), measured


def _upright_fit(plain: Tensor, views: tuple[Tensor, Tensor, Tensor]) -> tuple[PlaceDensity, float]:
    """A Gaussian of upright images (`_upright_views`), and the share of the plain
    Gaussian's held-out residual `plain` that it leaves."""
    upright_fitting, upright_measuring, measured = views
    standing = PlaceDensity(upright_fitting.shape[1])
    turned = _fit_gaussian(standing, upright_fitting, upright_measuring)
    # The plain residual over the same disc, set upright as the turned one was: a fair match.
    plain_energy = float(upright_by(plain, measured).pow(2).sum())
    return standing, float(turned.pow(2).sum()) / max(plain_energy, 1e-12)


def _fit_gaussian(density: PlaceDensity, fitting: Tensor, measuring: Tensor) -> Tensor:
    """Fill `density`'s Gaussian from `fitting` (which it centres in place: large images,
    many of them) and its spread from `measuring`; return the measuring images'
    residual (what the spread was measured on)."""
    flat = fitting.flatten(1).float()
    mean = flat.mean(0)
    density.mean = mean.view(fitting.shape[1:])
    density.basis = _directions(flat.sub_(mean))
    residual = density.residual(measuring.float())
    spread = residual.pow(2).mean(0).sqrt()
    floor = FLOOR * spread.mean(dim=(1, 2), keepdim=True).clamp(min=1e-3)
    density.inverse_spread = 1.0 / torch.maximum(spread, floor)
    return residual


def _directions(centred: Tensor) -> Tensor:
    """The principal directions (K, D) of the rows of `centred` (n, D) that hold
    `VARIANCE` of their variance, at most MAX_DIRECTIONS and MAX_BASIS / D of them; from
    the eigenvectors of the n x n Gram matrix, since n is far smaller than D."""
    gram = (centred @ centred.T).double().div_(len(centred))
    values, vectors = torch.linalg.eigh(gram)
    values, vectors = values.flip(0).clamp(min=0.0), vectors.flip(1)
    share = torch.cumsum(values, 0) / values.sum().clamp(min=1e-12)
    cap = min(MAX_DIRECTIONS, MAX_BASIS // centred.shape[1], len(centred) - 1)
    count = max(1, min(int((share < VARIANCE).sum()) + 1, cap))
    keep = values[:count] > 1e-12 * float(values[0].clamp(min=1e-12))
    values, vectors = values[:count][keep], vectors[:, :count][:, keep]
    directions = (vectors.T.float() @ centred) / (values * len(centred)).sqrt().float()[:, None]
    return directions.contiguous()


def _silent(line: str) -> None:
    pass
