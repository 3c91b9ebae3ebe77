"""The model side of the service: device, artifact, and the `run(op, batch)` the batcher calls.

Ops, each a batch of rows in and a tuple of per-row outputs out (all float32, on CPU)::

    encode         images (N, C, H, W) -> mu (N, D), logvar (N, D)
    decode         latents (N, D)      -> x_mean (N, C, H, W)
    score          images (N, C, H, W) -> score (N,)
    score_heatmap  images (N, C, H, W) -> score (N,), pixel_nll (N, C, H, W)

Every batch is padded up to the next warm-up size ("bucket") so that the model only ever
sees shapes it was warmed up with; padded rows are computed and dropped. The runtime
times every call per op and bucket (warm-up measures them all), and `plan` uses those
times to tell the batcher when a batch runs sooner split at a bucket than padded whole. On CUDA the
rows are staged in pinned host memory, copied without blocking, and the outputs come
back in one device-to-host copy: one synchronisation per batch. On CPU the same code
runs and the copies are no-ops.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable

import torch

from app.artifact import ArtifactError, ModelMetadata, load_artifact
from app.config import Settings

logger = logging.getLogger("vae.runtime")

OPS = ("encode", "decode", "score", "score_heatmap")
WARMUP_PASSES = 2  # TorchScript's profiling executor optimises a graph after its first runs
SCORE_ROWS = 128  # decoder rows per `score` call: rows x score_samples


class StartupError(Exception):
    """The service cannot start; the message is the one line an operator reads."""


def pick_device(requested: str) -> torch.device:
    """`auto` is CUDA when present; an explicit CUDA device must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"VAE_DEVICE={requested} but CUDA is not available")
        if (device.index or 0) >= torch.cuda.device_count():
            raise StartupError(
                f"VAE_DEVICE={requested} but there are only "
                f"{torch.cuda.device_count()} CUDA devices"
            )
    return device


class ModelRuntime:
    """The loaded artifact on its device, and the batched ops the worker thread runs."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        metadata: ModelMetadata,
        device: torch.device,
        batch_sizes: tuple[int, ...],
    ) -> None:
        self.module = module
        self.metadata = metadata
        self.device = device
        self.batch_sizes = batch_sizes
        self._staging: dict[tuple[int, ...], torch.Tensor] = {}
        # fastest call seen per (op, bucket): the cost with the least interference
        self._cost_s: dict[tuple[str, int], float] = {}
        # `score` runs the decoder on rows x score_samples: past ~128 decoder rows a bigger
        # call only spills activations out of cache (per-image cost 6.5 ms at batch 8,
        # 12.7 ms at 64 unchunked), so it is called in chunks
        chunk = max(1, SCORE_ROWS // metadata.calibration.score_samples)

        def score(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([module.score(part) for part in x.split(chunk)])

        self._ops: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, ...]]] = {
            "encode": lambda x: tuple(module.encode(x)),
            "decode": lambda z: (module.decode(z),),
            "score": lambda x: (score(x),),
            "score_heatmap": lambda x: (score(x), module.pixel_nll(x)),
        }

    @classmethod
    def load(cls, settings: Settings) -> ModelRuntime:
        """Pick the device, set threads, load the artifact; `StartupError` on any failure."""
        device = pick_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        try:
            module, metadata = load_artifact(settings.model_dir, device)
        except ArtifactError as exc:
            raise StartupError(f"cannot load the model artifact: {exc}") from None
        logger.info(
            "model loaded",
            extra={
                "fields": {
                    "model": metadata.name,
                    "device": str(device),
                    "dir": str(settings.model_dir),
                }
            },
        )
        return cls(module, metadata, device, settings.batch_sizes)

    @property
    def latent_dim(self) -> int:
        return self.metadata.latent_dim

    def row_shape(self, op: str) -> tuple[int, ...]:
        """The shape of one input row of `op`."""
        return (self.latent_dim,) if op == "decode" else self.metadata.image_shape

    def run(self, op: str, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batcher's `RunFn`: `batch` (B, ...) on CPU -> per-row outputs on CPU."""
        rows = batch.shape[0]
        started = time.perf_counter()
        with torch.inference_mode():
            staged = self._stage(batch)
            outputs = self._to_host(self._ops[op](staged), rows, staged)
        key = (op, staged.shape[0])
        self._cost_s[key] = min(self._cost_s.get(key, float("inf")), time.perf_counter() - started)
        return outputs

    def plan(self, op: str, available: int) -> int:
        """The batcher's `PlanFn`: how many of `available` queued rows the next batch takes.

        Padded up to its bucket, a batch costs the whole bucket: 33 rows cost 64 rows'
        time, nearly double 32; and past some size a bigger batch only spills out of
        cache (the heavy fixture decodes 64 rows slower per row than 32). So the batch
        takes a smaller bucket's worth when that batch plus the rest, each run on its
        own and padded, cost less than all of them at once, by the fastest times
        measured so far. The rest usually find company in the next batch, so this never
        makes the rows queued now finish later.
        """
        try:
            best, best_cost = available, self._cost_s[(op, self._bucket(available))]
            for part in reversed(self.batch_sizes):  # on a tie the bigger batch goes first
                if part >= available:
                    continue
                rest = self._bucket(available - part)
                cost = self._cost_s[(op, part)] + self._cost_s[(op, rest)]
                if cost < best_cost:
                    best, best_cost = part, cost
        except KeyError:  # not measured yet
            return available
        return best

    def _bucket(self, rows: int) -> int:
        index = bisect_left(self.batch_sizes, rows)
        return self.batch_sizes[index] if index < len(self.batch_sizes) else rows

    def _stage(self, batch: torch.Tensor) -> torch.Tensor:
        """Copy `batch` into a reusable (pinned, on CUDA) buffer of bucket size, then to device.

        Reusing the buffer is safe: one worker thread runs batches one after another, and
        `_to_host` waits for the device before the next batch can overwrite it.
        """
        rows = batch.shape[0]
        shape = (self._bucket(rows), *batch.shape[1:])
        buffer = self._staging.get(shape)
        if buffer is None:
            pin = self.device.type == "cuda"
            buffer = torch.zeros(shape, dtype=torch.float32, pin_memory=pin)
            self._staging[shape] = buffer
        buffer[:rows].copy_(batch)
        return buffer.to(self.device, non_blocking=True)

    def _to_host(
        self, outputs: tuple[torch.Tensor, ...], rows: int, staged: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Drop padded rows; on CUDA bring all outputs back in one copy (the batch's sync)."""
        kept = [output[:rows] for output in outputs]
        if self.device.type == "cpu":  # an output that aliases the staging buffer (an
            # identity method) would change under its caller when the next batch is staged
            buffer = staged.untyped_storage().data_ptr()
            return tuple(
                output.clone() if output.untyped_storage().data_ptr() == buffer else output
                for output in kept
            )
        flat = torch.cat([output.reshape(rows, -1) for output in kept], dim=1).cpu()
        widths = [output[0].numel() for output in kept]
        parts = flat.split(widths, dim=1)
        return tuple(part.reshape(output.shape) for part, output in zip(parts, kept, strict=True))

    def warmup_batches(self) -> list[tuple[str, torch.Tensor]]:
        """(op, rows) for every op at every bucket, each `WARMUP_PASSES` times."""
        batches = []
        for op in OPS:
            for size in self.batch_sizes:
                rows = torch.full((size, *self.row_shape(op)), 0.5)
                batches += [(op, rows)] * WARMUP_PASSES
        return batches


async def warm_up(submit: Callable, runtime: ModelRuntime) -> float:
    """Run every op at every bucket through `submit` (the batcher); returns seconds taken.

    Going through the batcher warms the worker thread that serves traffic (on CUDA its
    library handles are per thread). A failure here is an incompatible artifact.
    """
    started = time.perf_counter()
    for op, rows in runtime.warmup_batches():
        try:
            await submit(op, rows)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StartupError(
                f"the model failed its warm-up ({op} at batch size {len(rows)}): {reason}"
            ) from None
    return time.perf_counter() - started
