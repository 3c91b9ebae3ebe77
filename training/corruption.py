"""Training-time anomalies for the inspection model: irregular blobs of foreign content.

The inspection model (`training.spatial`) learns what normal looks like from normal
images alone, and learns to point at what does not belong by being shown crops with
made-up intrusions, as DRAEM does (Zavrtanik et al., "DRAEM: a discriminatively trained
reconstruction embedding for surface anomaly detection", ICCV 2021). Each intrusion is

    where  a smooth random blob: multi-octave value noise, thresholded at a random level
    what   the crop's own pixels transformed (inverted, posterised, re-lit, flattened,
           blurred), uniform noise, or another crop of the batch turned by 90 degrees

blended in with a random opacity. These shapes and fills are deliberately unlike the
defects of `training.defects` (strokes, ellipses, pasted patches), which choose the map
smoothing on the validation split and measure the texture benchmark: a model never
trains on the families it is measured with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

OCTAVES = ((2, 1.0), (4, 0.5), (8, 0.25))  # (cells per side, weight): blobs of many sizes
FILLS = 7
CHANGED = 0.02  # a pixel is part of the intrusion's mask only if it visibly changed


def blob_masks(count: int, size: tuple[int, int], device: torch.device) -> Tensor:
    """Smooth random blobs, (count, 1, H, W) of 0.0 / 1.0, covering about 5-50% of a crop."""
    noise = torch.zeros(count, 1, *size, device=device)
    for cells, weight in OCTAVES:
        grid = torch.rand(count, 1, cells + 1, cells + 1, device=device)
        noise += weight * F.interpolate(grid, size=size, mode="bicubic", align_corners=True)
    low = noise.amin(dim=(2, 3), keepdim=True)
    high = noise.amax(dim=(2, 3), keepdim=True)
    noise = (noise - low) / (high - low + 1e-6)
    return (noise > _uniform(count, 0.5, 0.8, device)).float()


def foreign_content(crops: Tensor) -> Tensor:
    """For each crop (N, C, H, W) in [0, 1], one of the fills, chosen at random per crop."""
    n, device = crops.shape[0], crops.device
    relit = crops * _uniform(n, 0.3, 1.7, device) + _uniform(n, -0.3, 0.3, device)
    flat = crops.mean(dim=(2, 3), keepdim=True) * _uniform(n, 0.5, 1.5, device)
    turns = int(torch.randint(1, 4, (1,)))
    others = crops[torch.randperm(n, device=device)].rot90(turns, dims=(2, 3))
    fills = torch.stack(
        [
            1.0 - crops,
            (crops * 4).floor() / 4,
            relit,
            flat.expand_as(crops),
            _box_blur(crops, 7),
            torch.rand(crops.shape, device=device),
            others,
        ]
    )  # (FILLS, N, C, H, W)
    choice = torch.randint(0, FILLS, (n,), device=device)
    return fills[choice, torch.arange(n, device=device)].clamp(0.0, 1.0)


def corrupt(crops: Tensor, share: float = 0.5) -> tuple[Tensor, Tensor]:
    """Intrusions on about `share` of the crops: (corrupted (N, C, H, W), mask (N, 1, H, W))."""
    n, device = crops.shape[0], crops.device
    masks = blob_masks(n, (crops.shape[2], crops.shape[3]), device)
    masks = masks * (torch.rand(n, 1, 1, 1, device=device) < share).float()
    opacity = _uniform(n, 0.2, 1.0, device)
    corrupted = crops + masks * opacity * (foreign_content(crops) - crops)
    visible = (corrupted - crops).abs().amax(dim=1, keepdim=True) > CHANGED
    return corrupted, masks * visible.float()


def random_crops(images: Tensor, size: int, per_image: int) -> Tensor:
    """`per_image` random `size` x `size` crops of every image: (N * per_image, C, size, size)."""
    n, _, height, width = images.shape
    device, count = images.device, n * per_image
    source = torch.arange(n, device=device).repeat_interleave(per_image)
    tops = torch.randint(0, height - size + 1, (count,), device=device)
    lefts = torch.randint(0, width - size + 1, (count,), device=device)
    span = torch.arange(size, device=device)
    rows = (tops[:, None] + span)[:, :, None]  # (count, size, 1)
    cols = (lefts[:, None] + span)[:, None, :]  # (count, 1, size)
    picked = images.permute(0, 2, 3, 1)[source[:, None, None], rows, cols]  # (count, s, s, C)
    return picked.permute(0, 3, 1, 2).contiguous()


def _uniform(count: int, low: float, high: float, device: torch.device) -> Tensor:
    return torch.empty(count, 1, 1, 1, device=device).uniform_(low, high)


def _box_blur(x: Tensor, size: int) -> Tensor:
    return F.avg_pool2d(F.pad(x, (size // 2,) * 4, mode="replicate"), size, stride=1)
