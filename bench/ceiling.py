"""The in-process ceiling: the TorchScript artifact called directly, no HTTP and no batcher.

Each op the service runs is timed at each batch size the service pads its batches to
(its warm-up buckets), after a few untimed calls for TorchScript's profiling executor.
From these and the batch sizes the service actually formed (its `/metrics`), `m`, the
model's cost per row in a run, follows without guessing: see `model_ms_per_row`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from app.artifact import load_artifact
from app.buckets import Buckets
from bench.fixtures import Subject

WARMUP_CALLS = 3
MIN_CALLS = 3
# the service's op -> how to call the artifact for it
OPS: dict[str, Callable[[Any, torch.Tensor], object]] = {
    "encode": lambda module, x: module.encode(x),
    "decode": lambda module, z: module.decode(z),
    "score": lambda module, x: module.score(x),
}


def measure(
    subject: Subject, device: str, batch_sizes: tuple[int, ...], seconds_per_point: float = 0.3
) -> dict[str, dict[str, dict[str, float]]]:
    """{op: {batch size: {batch_ms, ms_per_row, rows_per_s}}}, medians of repeated calls."""
    module, metadata = load_artifact(subject.directory, device)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for op, call in OPS.items():
        table[op] = {}
        for size in batch_sizes:
            shape = (size, metadata.latent_dim) if op == "decode" else (size, *metadata.image_shape)
            rows = torch.rand(shape, device=device)
            seconds = _median_call(lambda: call(module, rows), device, seconds_per_point)  # noqa: B023
            table[op][str(size)] = {
                "batch_ms": round(seconds * 1000, 4),
                "ms_per_row": round(seconds * 1000 / size, 4),
                "rows_per_s": round(size / seconds, 1),
            }
    return table


def _median_call(call: Callable[[], object], device: str, budget: float) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for _ in range(WARMUP_CALLS):
            call()
        sync()
        times: list[float] = []
        stop = time.perf_counter() + budget
        while len(times) < MIN_CALLS or time.perf_counter() < stop:
            started = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def model_ms_per_row(ceiling: dict[str, dict[str, float]], batches: dict[str, Any]) -> float | None:
    """`m` for one op: the in-process time of the batches the service formed, per row.

    `batches` is `server.batch_summary(...)[op]`: batches per bucket (the service pads a
    batch up to its bucket, so a batch costs what its bucket costs) and rows in all.
    """
    buckets = Buckets(tuple(sorted(int(size) for size in ceiling)))
    total_ms = 0.0
    for bound, count in batches["batch_sizes"].items():
        size = min(buckets.of(int(bound)), buckets.largest)
        total_ms += count * ceiling[str(size)]["batch_ms"]
    return round(total_ms / batches["rows"], 4) if batches["rows"] else None
