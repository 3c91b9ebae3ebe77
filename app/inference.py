"""The model as routes see it: async domain verbs that go through the batcher.

Each verb submits its rows with the request's deadline, records the batches they ran in
on the request context, and turns the batcher's refusals into the errors clients see.
"""

from __future__ import annotations

import torch

from app.artifact import ModelMetadata
from app.batching import (
    BatcherClosedError,
    DeadlineExceededError,
    Lane,
    NonFiniteOutputError,
    QueueFullError,
)
from app.context import RequestContext
from app.errors import NonFiniteResultError, OverloadedError, RequestTimeoutError, ShuttingDownError
from app.metrics import Metrics


class Inference:
    """One loaded model version's verbs, through its lane of the shared batcher."""

    def __init__(self, lane: Lane, metadata: ModelMetadata, metrics: Metrics) -> None:
        self.lane = lane
        self.metadata = metadata
        self._metrics = metrics

    async def encode(
        self, images: torch.Tensor, context: RequestContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> mu (N, D), logvar (N, D)."""
        mu, logvar = await self._submit("encode", images, context)
        return mu, logvar

    async def decode(self, latents: torch.Tensor, context: RequestContext) -> torch.Tensor:
        """(N, D) -> images (N, C, H, W) in [0, 1]."""
        (images,) = await self._submit("decode", latents, context)
        return images

    async def sample(
        self, noise: torch.Tensor, context: RequestContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior noise (N, 1 + D) -> latents (N, D) of the sampling prior, their images."""
        latents, images = await self._submit("sample", noise, context)
        return latents, images

    async def score(
        self, images: torch.Tensor, context: RequestContext, *, heatmap: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, C, H, W) -> score (N,) and, when asked, the heat map (N, 1, H, W)."""
        if not heatmap:
            (scores,) = await self._submit("score", images, context)
            return scores, None
        scores, heat = await self._submit("score_heatmap", images, context)
        return scores, heat

    async def _submit(
        self, op: str, rows: torch.Tensor, context: RequestContext
    ) -> tuple[torch.Tensor, ...]:
        try:
            outcome = await self.lane.submit(op, rows, deadline=context.deadline)
        except QueueFullError:
            self._metrics.rejected.labels("queue_full").inc()
            raise OverloadedError(
                "too many requests are waiting for the model; retry later"
            ) from None
        except BatcherClosedError:
            self._metrics.rejected.labels("shutting_down").inc()
            raise ShuttingDownError(
                "the service is shutting down; retry on another instance"
            ) from None
        except DeadlineExceededError:
            raise RequestTimeoutError("the request did not finish within its deadline") from None
        except NonFiniteOutputError:
            raise NonFiniteResultError(
                f"the model produced NaN or inf for this input; quote request id "
                f"{context.request_id} when reporting it"
            ) from None
        context.batch_ids.extend(outcome.batch_ids)
        return outcome.outputs
