"""The area under the ROC curve, the detection figure every anomaly table here reports."""

from __future__ import annotations

import torch
from torch import Tensor

from training.errors import TrainingError


def auroc(normal: Tensor, anomalous: Tensor) -> float:
    """P(an anomalous score exceeds a normal one), ties counting half (Mann-Whitney U)."""
    if len(normal) == 0 or len(anomalous) == 0:
        raise ValueError("AUROC needs at least one normal and one anomalous score")
    scores = torch.cat([normal.flatten(), anomalous.flatten()]).double()
    if bool(scores.isnan().any()):
        raise TrainingError("anomaly scores contain NaN")
    ranks = _average_ranks(scores)
    n_normal, n_anomalous = len(normal), len(anomalous)
    u = ranks[n_normal:].sum() - n_anomalous * (n_anomalous + 1) / 2
    return float(u / (n_normal * n_anomalous))


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of `values`; tied values share the mean of their ranks."""
    order = values.argsort()
    _, group, counts = torch.unique_consecutive(
        values[order], return_inverse=True, return_counts=True
    )
    last = counts.cumsum(0).double()  # rank of each tie group's last member
    ranks = torch.empty_like(values)
    ranks[order] = (last - (counts - 1) / 2)[group]
    return ranks
