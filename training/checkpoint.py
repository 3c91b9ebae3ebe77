"""Checkpoints: plain dicts of tensors and primitives, loadable with `weights_only=True`.

`last.pt` holds everything `--resume` needs (weights, optimizer, epoch, step, the best
weights so far, the images and seconds trained, so the throughput spans every epoch);
`best.pt` holds the weights with the lowest validation negative ELBO.
Both carry `ModelConfig.to_dict()` and the training config, so a checkpoint rebuilds
its own model. Nothing is pickled as an object: no code runs when one is loaded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from training.config import TrainConfig
from training.errors import CheckpointError, first_line
from training.model import ModelConfig

LAST = "last.pt"
BEST = "best.pt"

if TYPE_CHECKING:
    from training.model import AnyVAE


@dataclass
class Progress:
    """Where a run stands; `last.pt` restores it."""

    epoch: int = 0
    step: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    best_weights: dict[str, Tensor] | None = None
    images: int = 0  # trained on, by all ranks, over every epoch so far
    train_seconds: float = 0.0  # spent in those epochs' steps (validation not counted)
    pace: float = 0.0  # how far along its schedules the run is (`training.budget.Pace`)

    def record(self, epoch: int, val: float, model: AnyVAE) -> bool:
        """Close `epoch` with validation `val`; True (and keep the weights) when best."""
        self.epoch = epoch
        if not val < self.best_val:  # also false for nan: a diverged epoch is never best
            return False
        self.best_val, self.best_epoch = val, epoch
        self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


@dataclass(frozen=True)
class RunIdentity:
    """What every checkpoint of a run carries, and what `--resume` must match."""

    config: TrainConfig
    model_config: ModelConfig
    data_fingerprint: str

    def fields(self) -> dict[str, Any]:
        return {
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "data_fingerprint": self.data_fingerprint,
        }


def save_last(
    run: RunIdentity, model: AnyVAE, optimizer: torch.optim.Optimizer, progress: Progress
) -> Path:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": progress.epoch,
        "step": progress.step,
        "best_val_nelbo": progress.best_val,
        "best_epoch": progress.best_epoch,
        "best_model": progress.best_weights,
        "images": progress.images,
        "train_seconds": progress.train_seconds,
        "pace": progress.pace,
        **run.fields(),
    }
    return save_checkpoint(state, run.config.checkpoint_path / LAST)


def save_best(run: RunIdentity, progress: Progress) -> Path:
    state = {
        "model": progress.best_weights,
        "epoch": progress.best_epoch,
        "val_nelbo": progress.best_val,
        **run.fields(),
    }
    return save_checkpoint(state, run.config.checkpoint_path / BEST)


def resume(
    path: Path, run: RunIdentity, model: AnyVAE, optimizer: torch.optim.Optimizer
) -> Progress:
    """Load `path` into `model` and `optimizer`; refuse another network or other data."""
    state = load_checkpoint(path, next(model.parameters()).device)
    _check_compatible(state, run, path)
    if "optimizer" not in state:
        raise CheckpointError(f"{path} holds weights only; resume from {LAST}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # e.g. written before the model gained a buffer
        raise CheckpointError(f"{path} does not fit this model ({first_line(exc)})") from None
    optimizer.load_state_dict(state["optimizer"])
    return Progress(
        epoch=int(state["epoch"]),
        step=int(state["step"]),
        best_val=float(state["best_val_nelbo"]),
        best_epoch=int(state["best_epoch"]),
        best_weights=state["best_model"],
        # absent from checkpoints written before they were recorded
        images=int(state.get("images", 0)),
        train_seconds=float(state.get("train_seconds", 0.0)),
        pace=float(state.get("pace", 0.0)),
    )


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write atomically, so an interrupted run never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    return path


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        reason = first_line(exc)
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint of this project")
    return state


def _check_compatible(state: dict[str, Any], run: RunIdentity, path: Path) -> None:
    saved = ModelConfig.from_dict(state["model_config"])
    if saved != run.model_config:
        ours, theirs = run.model_config.to_dict(), saved.to_dict()
        field = next(k for k in ours if ours[k] != theirs.get(k))
        raise CheckpointError(
            f"{path} was trained with {field}={theirs.get(field)!r}, this run has {ours[field]!r}"
        )
    if state.get("data_fingerprint") != run.data_fingerprint:
        raise CheckpointError(f"{path} was trained on different data (fingerprint mismatch)")
