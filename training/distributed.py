"""Data-parallel training under `torchrun`: one process per device, DistributedDataParallel.

    torchrun --standalone --nproc-per-node 2 -m training --data digits.npz

torchrun starts one `python -m training` per process and tells each its place in
RANK, LOCAL_RANK and WORLD_SIZE. Every rank loads the same data, starts from the same
seeded weights and draws the same per-(seed, epoch) shuffle; rank r trains on its
strided `shard` of that order, as `DistributedSampler` would, and DDP averages the
gradients in backward, so the replicas stay identical. `--batch-size` is the global
batch: each rank takes batch_size / world_size images a step, so a recipe means the
same thing at any scale (the same steps per epoch, hence the same schedules).
Validation is split over the ranks and all-reduced, so all of them agree on the best
epoch, and so is the final evaluation. Rank 0 alone writes checkpoints, calibrates and
exports; the others leave once the evaluation is done instead of waiting at a barrier,
so rank 0's export, however long, never runs into the process group's timeout
(`--dist-timeout-minutes`, which bounds how long a rank waits for the others at a
collective). Every per-step decision is taken without a collective: the time budget is
read by rank 0 and broadcast at sync points (`training.budget.Pace`). CPU ranks talk
over gloo, GPU ranks over NCCL, each rank on the GPU of its local rank.

Without torchrun the world is one rank and nothing here touches `torch.distributed`:
a plain run computes exactly what it did before this module existed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from training.errors import ConfigError

Log = Callable[[str], None]


def shard(order: Tensor, rank: int, size: int) -> Tensor:
    """Rank `rank`'s strided slice of `order`, the same length on every rank.

    Like `DistributedSampler`, the order wraps round to a multiple of `size` (at most
    size - 1 items are taken twice), because DDP needs every rank to take the same
    number of steps: its gradient all-reduce waits for all of them.
    """
    positions = torch.arange(rank, math.ceil(len(order) / size) * size, size, device=order.device)
    return order[positions % len(order)]


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a torchrun job."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rank_device(self, device: torch.device) -> torch.device:
        """Under torchrun a CUDA device means this rank's own GPU, the one of its local rank."""
        if self.size == 1 or device.type != "cuda":
            return device
        if device.index is not None:
            raise ConfigError(f"--device {device} puts every rank on one GPU; use 'cuda' or 'auto'")
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {self.local_rank} has no GPU of its own "
                f"({torch.cuda.device_count()} visible): start fewer processes per node"
            )
        return torch.device("cuda", self.local_rank)

    def require_shareable(self, batch_size: int, val_images: int) -> None:
        """Refuse, before any work, a run that the ranks cannot share out evenly."""
        if batch_size % self.size:
            raise ConfigError(
                f"--batch-size {batch_size} is the global batch and must divide evenly "
                f"over the {self.size} processes"
            )
        if val_images < self.size:
            raise ConfigError(
                f"{val_images} validation images cannot be shared by {self.size} processes; "
                "raise --val-fraction"
            )

    def local_batch(self, batch_size: int) -> int:
        """Images per step on this rank: `--batch-size` is the global batch, split evenly."""
        return batch_size // self.size

    def shard(self, order: Tensor) -> Tensor:
        return shard(order, self.rank, self.size)

    def stride(self, items: Tensor) -> Tensor:
        """Every size-th item from this rank's: disjoint parts for an exact, split mean."""
        return items[self.rank :: self.size]

    def mean(self, values: Tensor) -> float:
        """The mean of all ranks' `values` together, each rank holding its own part."""
        if self.size == 1:
            return float(values.mean())
        totals = torch.stack([values.double().sum(), torch.tensor(len(values)).double()])
        totals = totals.to(_collective_device())
        dist.all_reduce(totals)
        return float(totals[0] / totals[1])

    def sum(self, values: list[float]) -> list[float]:
        """Each of `values` added up over the ranks: one all-reduce."""
        if self.size == 1:
            return values
        totals = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(totals)
        return totals.tolist()

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's `values`, on every rank: one broadcast (what rank 0 decides, all do)."""
        if self.size == 1:
            return values
        shared = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.broadcast(shared, src=0)
        return shared.tolist()

    def seed_rank(self, seed: int) -> None:
        """Reseed so that each rank draws its own shifts and noise; alone, keep the stream."""
        if self.size > 1:
            torch.manual_seed(seed * self.size + self.rank)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module that takes the training steps: DDP around `model` under torchrun.

        Checkpoints, validation and export keep using `model` itself (`.module` of the
        wrapper), whose state dict has no 'module.' prefix and which TorchScript accepts.
        """
        if self.size == 1:
            return model
        device = next(model.parameters()).device
        return DistributedDataParallel(
            model,
            device_ids=None if device.type == "cpu" else [device],
            # a Bernoulli model never uses log_sigma, and plain DDP fails on its missing
            # gradient; static: the unused set never changes, so DDP learns it
            # once instead of searching the graph every step (find_unused_parameters)
            static_graph=True,
        )

    def main_only(self, log: Log) -> Log:
        """`log` on rank 0, silence elsewhere: one copy of each progress line."""
        return log if self.is_main else _silent


ALONE = World()  # a plain run: one process, no process group


def current() -> World:
    """This process's place, from torchrun's environment; `ALONE` without torchrun."""
    env = os.environ
    return World(
        int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))
    )


@contextmanager
def process_group(world: World, device: torch.device, timeout: timedelta) -> Iterator[None]:
    """The ranks joined for the block: NCCL on CUDA, gloo on the CPU; nothing when alone.
    A collective that waits longer than `timeout` for the other ranks fails the job."""
    if world.size == 1:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _silent(line: str) -> None:
    pass
