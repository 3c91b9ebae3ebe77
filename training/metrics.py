"""Likelihood metrics on held-out images: negative ELBO and the IWAE estimate of -log p(x).

Both are in nats per image. The noise comes from a seeded generator, so a metric
is reproducible and two epochs' validation figures differ only by the weights.
Work is chunked by memory: at most `EVAL_PIXELS` decoded pixels (latent samples times
pixels per image) go through the decoder at once. That is 2,048 MNIST samples, whose
conv-decoder activations take about 200 MB, and 32 samples of a 128x128 RGB image.

Under a time budget the evaluation is planned (`plan_evaluation`): fewer draws when the
requested ones would not fit, and a deadline at which it stops with the images done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

EVAL_PIXELS = 2048 * 28 * 28
ELBO_SAMPLES = 16  # draws averaged in the reported negative ELBO

if TYPE_CHECKING:
    from training.model import AnyVAE


def chunk_rows(image_shape: tuple[int, ...]) -> int:
    """Latent samples per decoder call for images of `image_shape` (C, H, W)."""
    return max(1, EVAL_PIXELS // math.prod(image_shape))


@dataclass(frozen=True)
class EvalPlan:
    """How many draws each metric takes, and when to stop (time.monotonic())."""

    elbo_samples: int = ELBO_SAMPLES
    iwae_samples: int = 256
    deadline: float = math.inf

    def rows(self, images: int) -> int:
        """Decoder rows the plan runs for `images` images."""
        return images * (self.elbo_samples + self.iwae_samples)


def plan_evaluation(
    images: int, iwae_samples: int, row_seconds: float, seconds_left: float
) -> tuple[EvalPlan, str | None]:
    """The requested plan when it fits in `seconds_left`; otherwise fewer draws (k first,
    it costs the most), and a line saying so. The deadline stops what still overruns."""
    requested = EvalPlan(iwae_samples=iwae_samples, deadline=time.monotonic() + seconds_left)
    plan = requested
    while plan.rows(images) * row_seconds > seconds_left and plan.rows(1) > 2:
        k, e = plan.iwae_samples, plan.elbo_samples
        if k >= e and k > 1:
            k //= 2
        else:
            e //= 2
        plan = EvalPlan(e, k, requested.deadline)
    if plan == requested:
        return plan, None
    needed = requested.rows(images) * row_seconds
    note = (
        f"evaluation: {requested.elbo_samples} ELBO and k={requested.iwae_samples} IWAE draws "
        f"would take about {format_seconds(needed)}, {format_seconds(seconds_left)} are left "
        f"of --max-minutes: using {plan.elbo_samples} and k={plan.iwae_samples}"
    )
    return plan, note


def bits_per_dim(nats: float, dims: int) -> float:
    """A continuous likelihood's nats per image as bits per 8-bit sub-pixel, the unit of
    image models: inputs are uint8 / 255, so a density times the bin width 1/255 is each
    value's probability, and -log2 P = nats / ln 2 + log2(255) per dimension."""
    return nats / (dims * math.log(2)) + math.log2(255)


def format_seconds(seconds: float) -> str:
    """12s, 3m05s, 2h10m: durations for people."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@torch.inference_mode()
def negative_elbo(model: AnyVAE, images: Tensor, samples: int = 1, seed: int = 0) -> Tensor:
    """Negative ELBO per image, (N,) on the CPU, averaged over `samples` draws."""
    return _negative_elbo(model, images, samples, torch.Generator().manual_seed(seed))


@torch.inference_mode()
def iwae_nll(model: AnyVAE, images: Tensor, samples: int, seed: int = 0) -> Tensor:
    """IWAE estimate of -log p(x) per image with `samples` draws, (N,) on the CPU."""
    return _iwae_nll(model, images, samples, torch.Generator().manual_seed(seed))


def _negative_elbo(model: AnyVAE, images: Tensor, samples: int, noise: torch.Generator) -> Tensor:
    device = _device(model)
    chunk = max(1, chunk_rows(images.shape[1:]) // samples)
    parts = []
    for x in images.split(chunk):
        eps = torch.randn(samples, len(x), model.latent_dim, generator=noise)
        parts.append(model.nelbo_with(x.to(device), eps.to(device)).cpu())
    return torch.cat(parts)


def _iwae_nll(model: AnyVAE, images: Tensor, samples: int, noise: torch.Generator) -> Tensor:
    """Many draws are split into groups; each group's log-mean-exp is recovered from
    `iwae_with` and the groups are merged exactly with one more logsumexp."""
    device = _device(model)
    rows = chunk_rows(images.shape[1:])
    per_chunk = max(1, rows // samples)
    group = min(samples, max(1, rows // per_chunk))
    parts = []
    for x in images.split(per_chunk):
        x = x.to(device)
        log_sums = []  # (groups, n): logsumexp of each group's log weights
        for start in range(0, samples, group):
            k = min(group, samples - start)
            eps = torch.randn(k, len(x), model.latent_dim, generator=noise).to(device)
            log_sums.append(math.log(k) - model.iwae_with(x, eps))
        merged = torch.logsumexp(torch.stack(log_sums), dim=0) - math.log(samples)
        parts.append(-merged.cpu())
    return torch.cat(parts)


@dataclass(frozen=True)
class LikelihoodSums:
    """Per-image metrics summed over the images evaluated: what ranks add together."""

    nelbo: float
    iwae: float
    images: int


@torch.inference_mode()
def likelihood_sums(
    model: AnyVAE,
    images: Tensor,
    plan: EvalPlan,
    seed: int = 0,
    on_images: Callable[[int], None] | None = None,
) -> LikelihoodSums:
    """Negative ELBO and IWAE summed over `images`, block by block until `plan.deadline`.

    Each metric draws from its own seeded generator, and the blocks are whole ELBO
    chunks, so the figures are those of the two metrics computed one after the other.
    """
    model.eval()
    elbo_noise = torch.Generator().manual_seed(seed)
    iwae_noise = torch.Generator().manual_seed(seed)
    block = max(1, chunk_rows(images.shape[1:]) // plan.elbo_samples)
    nelbo, iwae, done = 0.0, 0.0, 0
    for x in images.split(block):
        nelbo += float(_negative_elbo(model, x, plan.elbo_samples, elbo_noise).double().sum())
        iwae += float(_iwae_nll(model, x, plan.iwae_samples, iwae_noise).double().sum())
        done += len(x)
        if on_images is not None:
            on_images(len(x))
        if time.monotonic() > plan.deadline:
            break
    return LikelihoodSums(nelbo, iwae, done)


def metrics_from(sums: LikelihoodSums, plan: EvalPlan) -> dict[str, float]:
    return {
        "val_nelbo": sums.nelbo / sums.images,
        "val_iwae_nll": sums.iwae / sums.images,
        "elbo_samples": float(plan.elbo_samples),
        "iwae_samples": float(plan.iwae_samples),
        "val_images": float(sums.images),
    }


def _device(model: AnyVAE) -> torch.device:
    return next(model.parameters()).device
