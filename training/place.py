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

Where the images are not aligned (random crops of a surface, a part turned any way),
no few directions hold them and the residual is most of every image; the validation
choice (`training.selection`) then gives the evidence no share, and a map without a
share is not computed. It exists at the fitted size only, which is the exported size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VARIANCE = 0.99  # of the fitting images' variance that the principal directions hold
MAX_DIRECTIONS = 256
MAX_BASIS = 1 << 24  # floats in the directions (64 MB): fewer directions for large images
SPREAD_SHARE = 0.25  # of the training images that measure the spread, not the directions
FLOOR = 0.25  # of the mean spread: the least spread a place is given


class PlaceDensity(nn.Module):
    """Per pixel, one channel: the squared standardised residual beside the principal
    directions of the normal images.

    Until `fit_place_density` fills it there are no directions, and every value is 0.
    Its tensors are buffers outside the state dict, fitted from the training images and
    exported with the artifact.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels, 1, 1), False)
        self.register_buffer("basis", torch.zeros(0, channels), False)  # (K, C*H*W)
        self.register_buffer("inverse_spread", torch.zeros(channels, 1, 1), False)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, 1, H, W)
        basis: Tensor = self.basis  # type: ignore[assignment]
        if basis.shape[0] == 0:
            return torch.zeros_like(x[:, :1])
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


@torch.no_grad()
def fit_place_density(density: PlaceDensity, images: Tensor, seed: int = 0) -> PlaceDensity:
    """Fill `density` from `images` (N, C, H, W), all of one size (the working size): the
    directions from a random 3/4 of them, the spread from the rest."""
    if len(images) < 4:
        raise ValueError("fitting a density per place needs at least 4 images")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held = max(1, round(SPREAD_SHARE * len(images)))
    fitting, measuring = images[order[held:]], images[order[:held]]
    flat = fitting.flatten(1).float()
    mean = flat.mean(0)
    density.mean = mean.view(images.shape[1:])
    density.basis = _directions(flat.sub_(mean))  # in place: large images, many of them
    residual = density.residual(measuring.float())
    spread = residual.pow(2).mean(0).sqrt()
    floor = FLOOR * spread.mean(dim=(1, 2), keepdim=True).clamp(min=1e-3)
    density.inverse_spread = 1.0 / torch.maximum(spread, floor)
    return density


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
